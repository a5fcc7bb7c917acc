"""`/keys`: the account's API keys over HTTP (contract section 10), scope
`keys:write`, through the same services as `smsdora keys`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from broker import store
from broker.clock import iso
from broker.http.auth import authenticate
from broker.http.messages import read_share
from broker.http.params import Integer, PathId, Position
from broker.http.responses import decode, ok, read_body
from broker.services import keys as key_service
from protocol.api import IssuedKey, KeyInfo, create_key_decoder

if TYPE_CHECKING:
    from broker.runtime import Broker

SCOPE = "keys:write"
KEY_ID = PathId("key_id", "The key's id.", not_found="Key not found")
KEYS_LIMIT = Integer("limit", "At most this many keys (default 100).", low=1, high=100,
                     default=100)
KEYS_CURSOR = Position("cursor", "The `nextCursor` of the previous page.")


def key_info(row: store.KeyRow) -> KeyInfo:
    return KeyInfo(id=str(row.id), name=row.name, prefix=row.prefix, scopes=row.scopes,
                   rateLimit=row.rate_limit, expiresAt=iso(row.expires_at),
                   revoked=row.revoked, createdAt=iso(row.created_at) or "",
                   lastUsedAt=iso(row.last_used_at))


def issued_key(issued: key_service.Issued) -> IssuedKey:
    row = issued.key
    return IssuedKey(id=str(row.id), key=issued.secret, prefix=row.prefix, name=row.name,
                     scopes=row.scopes, rateLimit=row.rate_limit, expiresAt=iso(row.expires_at))


async def create_key(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    key = await authenticate(request, SCOPE)
    req = decode(create_key_decoder, body)
    issued = await key_service.create(broker.pool, broker.secret, key.account_id, req.name,
                                      list(req.scopes), req.rateLimit, req.expiresIn)
    return ok(issued_key(issued), status=201)


async def list_keys(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, SCOPE)
    limit = KEYS_LIMIT.read(request.query_params)
    after = KEYS_CURSOR.read(request.query_params)
    async with read_share(broker, key.account_id):
        rows, more = await key_service.page(broker.pool, key.account_id, limit, after)
        last = rows[-1] if rows else None
        return ok([key_info(r) for r in rows],
                  next_cursor=Position.of(last.created_at, last.id) if more and last else None)


async def get_key(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, SCOPE)
    key_id = KEY_ID.read(request.path_params)
    return ok(key_info(await key_service.get(broker.pool, key_id, key.account_id)))


async def revoke_key(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, SCOPE)
    key_id = KEY_ID.read(request.path_params)
    return ok(key_info(await key_service.revoke(broker.pool, key_id, key.account_id)))


async def rotate_key(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, SCOPE)
    key_id = KEY_ID.read(request.path_params)
    issued = await key_service.rotate(broker.pool, broker.secret, key_id, key.account_id)
    if issued is None:
        raise key_service.KeyNotFound()
    return ok(issued_key(issued))
