"""API keys: create and rotate (contract section 3). The secret is returned
once and stored only as an HMAC."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from broker import keys, store
from broker.clock import utcnow
from broker.errors import BadRequest


class Issued(NamedTuple):
    key: store.KeyRow
    secret: str  # the full key, shown once


async def create(db: store.Db, server_secret: bytes, account_id: uuid.UUID, name: str,
                 scopes: list[str], rate_limit: int | None, expires_in_s: int | None) -> Issued:
    try:
        checked = keys.check_scopes(scopes or list(keys.DEFAULT_SCOPES))
    except ValueError as err:
        raise BadRequest(str(err)) from None
    expires_at = None if expires_in_s is None else utcnow() + dt.timedelta(seconds=expires_in_s)
    full, prefix = keys.make_secret(keys.KEY_KIND)
    row = await store.insert_key(db, account_id, name, prefix, keys.digest(server_secret, full),
                                 checked, rate_limit, expires_at)
    return Issued(row, full)


async def rotate(db: store.Db, server_secret: bytes, key_id: uuid.UUID,
                 account_id: uuid.UUID | None = None) -> Issued | None:
    """A new secret for the key (same id, name, scopes, limit, expiry); the
    old one stops working at once. None: no such key (in this account)."""
    full, prefix = keys.make_secret(keys.KEY_KIND)
    row = await store.rotate_key(db, key_id, prefix, keys.digest(server_secret, full), account_id)
    return Issued(row, full) if row is not None else None
