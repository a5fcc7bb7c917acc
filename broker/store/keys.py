"""API keys (contract section 3)."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from broker.store.pool import Db, rows_of


class KeyRow(msgspec.Struct, frozen=True):
    id: uuid.UUID
    account_id: uuid.UUID
    name: str
    prefix: str
    secret_hash: bytes
    scopes: list[str]
    rate_limit: int | None
    expires_at: dt.datetime | None
    revoked: bool
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None  # noted by each node, written by its flush loop
    monthly_messages: int = 0


# Sent by a trigger on api_keys (schema.sql) with the key's id.
KEY_CHANGED = "smsdora_key_changed"
# Sent by a trigger on api_keys (migration 0004) with the prefix of a key
# created, or rotated onto a new prefix.
KEY_ADDED = "smsdora_key_added"

_KEY_COLS = "k.id, k.account_id, k.name, k.prefix, k.secret_hash, k.scopes, k.rate_limit, " \
            "k.expires_at, k.revoked, k.created_at, k.last_used_at"


async def insert_key(db: Db, account_id: uuid.UUID, name: str, prefix: str, secret_hash: bytes,
                     scopes: list[str], rate_limit: int | None,
                     expires_at: dt.datetime | None) -> KeyRow:
    r = await db.fetchrow(
        "INSERT INTO api_keys AS k (id, account_id, name, prefix, secret_hash, scopes, rate_limit,"
        " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING " + _KEY_COLS,
        uuid.uuid4(), account_id, name, prefix, secret_hash, scopes, rate_limit, expires_at,
    )
    assert r is not None  # INSERT ... RETURNING
    return KeyRow(**dict(r))


async def key_by_prefix(db: Db, prefix: str) -> KeyRow | None:
    """The one query of an API-key check, with the account's plan joined in."""
    r = await db.fetchrow(
        f"SELECT {_KEY_COLS}, p.monthly_messages FROM api_keys k"
        " JOIN accounts a ON a.id = k.account_id JOIN plans p ON p.name = a.plan"
        " WHERE k.prefix = $1", prefix,
    )
    return KeyRow(**dict(r)) if r else None


async def get_key(db: Db, key_id: uuid.UUID, account_id: uuid.UUID | None) -> KeyRow | None:
    """One key; `account_id` scopes it (None only for the operator's CLI)."""
    r = await db.fetchrow(
        f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.id = $1"
        " AND ($2::uuid IS NULL OR k.account_id = $2)", key_id, account_id)
    return KeyRow(**dict(r)) if r else None


async def list_keys(db: Db, account_id: uuid.UUID, limit: int | None = None,
                    after: tuple[dt.datetime, uuid.UUID] | None = None) -> list[KeyRow]:
    """The account's keys, oldest first: at most `limit` (None: all) from
    past `after` (a keyset position: creation time, id)."""
    at, key_id = after if after is not None else (None, None)
    return rows_of(KeyRow, await db.fetch(
        f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.account_id = $1"
        " AND ($2::timestamptz IS NULL OR (k.created_at, k.id) > ($2, $3::uuid))"
        " ORDER BY k.created_at, k.id LIMIT $4",
        account_id, at, key_id, limit,
    ))


async def revoke_key(db: Db, key_id: uuid.UUID, account_id: uuid.UUID | None = None) -> bool:
    """Revoke (again: no change); `account_id` scopes it (None only for the
    operator's CLI). False: no such key."""
    status = await db.execute(
        "UPDATE api_keys SET revoked = true WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)",
        key_id, account_id,
    )
    return bool(status != "UPDATE 0")


async def rotate_key(db: Db, key_id: uuid.UUID, prefix: str, secret_hash: bytes,
                     account_id: uuid.UUID | None = None) -> KeyRow | None:
    """New secret, same id, name, scopes, limit and expiry; the old one stops at once."""
    r = await db.fetchrow(
        "UPDATE api_keys AS k SET prefix = $2, secret_hash = $3 WHERE k.id = $1"
        " AND ($4::uuid IS NULL OR k.account_id = $4) RETURNING " + _KEY_COLS,
        key_id, prefix, secret_hash, account_id,
    )
    return KeyRow(**dict(r)) if r else None


async def mark_keys_used(db: Db, used: dict[uuid.UUID, dt.datetime]) -> None:
    """When these keys were last used, in one statement (a node's flush loop,
    never a request); a later time another node wrote stays."""
    if not used:
        return
    await db.execute(
        # Locked first in id order: two nodes' flushes never wait for each
        # other in a cycle.
        "WITH l AS MATERIALIZED (SELECT id FROM api_keys WHERE id = ANY($1::uuid[])"
        "   ORDER BY id FOR UPDATE)"
        " UPDATE api_keys AS k SET last_used_at = u.at"
        "  FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)"
        " WHERE k.id = u.id AND k.id IN (SELECT id FROM l)"
        "   AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
        list(used), list(used.values()))
