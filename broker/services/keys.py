"""API keys: create, read, list, revoke and rotate, for `smsdora keys` and
`/keys` alike (contract sections 3, 6 and 10). A secret is returned once and
stored only as an HMAC."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from broker import keys, store
from broker.clock import utcnow
from broker.errors import BadRequest, NotFound


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
    old one stops working at once. None: no such key (in this account). A
    revoked key can be rotated: its new secret is refused too."""
    full, prefix = keys.make_secret(keys.KEY_KIND)
    row = await store.rotate_key(db, key_id, prefix, keys.digest(server_secret, full), account_id)
    return Issued(row, full) if row is not None else None


class KeyNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Key not found")


async def get(db: store.Db, key_id: uuid.UUID, account_id: uuid.UUID | None) -> store.KeyRow:
    row = await store.get_key(db, key_id, account_id)
    if row is None:
        raise KeyNotFound()
    return row


class Page(NamedTuple):
    keys: list[store.KeyRow]
    more: bool  # another page follows the last of these


async def page(db: store.Db, account_id: uuid.UUID, limit: int | None,
               after: tuple[dt.datetime, uuid.UUID] | None = None) -> Page:
    """The account's keys, oldest first, `limit` of them (None: all) past
    the keyset position `after`; never their secrets (only hashes are kept)."""
    rows = await store.list_keys(db, account_id, None if limit is None else limit + 1, after)
    if limit is not None and len(rows) > limit:
        return Page(rows[:limit], True)
    return Page(rows, False)


async def revoke(db: store.Db, key_id: uuid.UUID,
                 account_id: uuid.UUID | None = None) -> store.KeyRow:
    """Revoke a key (again: nothing changes); it stops working at once, on
    every broker (the api_keys trigger's notice empties their key caches)."""
    if not await store.revoke_key(db, key_id, account_id):
        raise KeyNotFound()
    return await get(db, key_id, account_id)
