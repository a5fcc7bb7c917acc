"""The caller's API key (contract section 3, Authentication): found, checked,
in scope and within its rate, or a named error."""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

from starlette.requests import Request

from broker import keys, store
from broker.errors import Forbidden, RateLimited, Unauthorized

if TYPE_CHECKING:
    from broker.runtime import Broker


async def authenticate(request: Request, scope: str, *, cached: bool = False) -> store.KeyRow:
    """The caller's key. `cached`: from the key cache when it can be trusted
    (the send path, whose INSERT checks the key again in the same statement);
    every other endpoint reads PostgreSQL."""
    broker: Broker = request.app.state.broker
    raw = keys.bearer(request.headers, api=True)
    prefix = keys.parse_prefix(keys.KEY_KIND, raw) if raw else None
    if raw is None or prefix is None:
        raise Unauthorized("Invalid API key")
    now = time.monotonic()
    cached = cached and broker.keys_cached()
    key = broker.key_cache.get(prefix, now) if cached else None
    if key is None:
        generation = broker.key_cache.generation
        key = await store.key_by_prefix(broker.pool, prefix)
        if key is not None and cached:
            broker.key_cache.put(prefix, str(key.id), key, now, generation)
    if key is None or not keys.matches(broker.secret, raw, key.secret_hash):
        raise Unauthorized("Invalid API key")
    if key.revoked:
        raise Unauthorized("API key revoked")
    if key.expires_at is not None and key.expires_at <= dt.datetime.now(dt.UTC):
        raise Unauthorized("API key expired")
    if not keys.has_scope(key.scopes, scope):
        raise Forbidden(f"Missing {scope} scope")
    if key.rate_limit is not None:
        retry = broker.rate_window.hit(str(key.id), key.rate_limit, now)
        if retry is not None:
            raise RateLimited(retry)
    return key
