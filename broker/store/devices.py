"""Devices: registration, tokens, last-seen."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

import msgspec

from broker.store.pool import Conn, Db, rows_of


class DeviceRow(msgspec.Struct, frozen=True):
    id: uuid.UUID
    account_id: uuid.UUID
    name: str
    token_hash: bytes
    send_rate: int
    active: bool
    last_seen_at: dt.datetime | None
    health: dict[str, Any] | None
    app_version: str | None
    online_node: str | None = None
    transport: str = "websocket"  # or "smsgate": the SMS Gateway for Android app
    created_at: dt.datetime | None = None  # the listings' keyset is (created_at, id)


WEBSOCKET, SMSGATE = "websocket", "smsgate"
_DEVICE_COLS = ("id, account_id, name, token_hash, send_rate, active, last_seen_at, health,"
                " app_version, online_node, transport, created_at")


class DeviceLimitReached(Exception):
    pass


async def insert_device(db: Conn, account_id: uuid.UUID, name: str, prefix: str,
                        token_hash: bytes, send_rate: int, transport: str = WEBSOCKET,
                        push_token: str | None = None,
                        sim_cards: list[Any] | None = None) -> DeviceRow:
    """Register a phone, within the plan's device limit (checked under a lock
    on the account row so that two registrations cannot both squeeze in)."""
    async with db.transaction():
        limit = await db.fetchval(
            "SELECT p.max_devices FROM accounts a JOIN plans p ON p.name = a.plan"
            " WHERE a.id = $1 FOR UPDATE OF a", account_id,
        )
        count = await db.fetchval(
            "SELECT count(*) FROM devices WHERE account_id = $1 AND active", account_id)
        if limit is not None and count >= limit:
            raise DeviceLimitReached()
        r = await db.fetchrow(
            "INSERT INTO devices (id, account_id, name, token_prefix, token_hash, send_rate,"
            " transport, push_token, sim_cards)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_DEVICE_COLS}",
            uuid.uuid4(), account_id, name, prefix, token_hash, send_rate, transport, push_token,
            sim_cards,
        )
    assert r is not None  # INSERT ... RETURNING
    return DeviceRow(**dict(r))


async def devices_by_token_prefix(db: Db, prefixes: list[str]) -> dict[str, DeviceRow]:
    """Devices by token prefix, many in one query (a reconnect storm)."""
    rows = await db.fetch(f"SELECT token_prefix, {_DEVICE_COLS} FROM devices"
                          " WHERE token_prefix = ANY($1::text[])", prefixes)
    out = {}
    for r in rows:
        fields = dict(r)
        prefix = fields.pop("token_prefix")
        out[prefix] = DeviceRow(**fields)
    return out


async def list_devices(db: Db, account_id: uuid.UUID, limit: int | None = None,
                       after: tuple[dt.datetime, uuid.UUID] | None = None) -> list[DeviceRow]:
    """The account's devices, oldest first: at most `limit` (None: all) from
    past `after` (a keyset position: registration time, id)."""
    at, device_id = after if after is not None else (None, None)
    return rows_of(DeviceRow, await db.fetch(
        f"SELECT {_DEVICE_COLS} FROM devices WHERE account_id = $1"
        " AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))"
        " ORDER BY created_at, id LIMIT $4",
        account_id, at, device_id, limit,
    ))


async def get_device(db: Db, device_id: uuid.UUID,
                     account_id: uuid.UUID | None) -> DeviceRow | None:
    """One device; `account_id` scopes it (None only for the operator's CLI)."""
    r = await db.fetchrow(
        f"SELECT {_DEVICE_COLS} FROM devices WHERE id = $1"
        " AND ($2::uuid IS NULL OR account_id = $2)", device_id, account_id)
    return DeviceRow(**dict(r)) if r else None


async def update_device(db: Conn, device_id: uuid.UUID, account_id: uuid.UUID,
                        name: str | None, send_rate: int | None,
                        active: bool | None) -> DeviceRow | None:
    """Rename, re-pace, deactivate or reactivate a device of the account
    (None: that field stays). Deactivating is `deactivate_device`, in the
    same transaction; reactivating is within the plan's device limit,
    checked under the account row's lock as a registration is. None: no
    such device."""
    async with db.transaction():
        limit = None
        if active:  # the account row first, as a registration locks it
            limit = await db.fetchval(
                "SELECT p.max_devices FROM accounts a JOIN plans p ON p.name = a.plan"
                " WHERE a.id = $1 FOR UPDATE OF a", account_id)
        row = await db.fetchrow(
            "SELECT active FROM devices WHERE id = $1 AND account_id = $2 FOR UPDATE",
            device_id, account_id)
        if row is None:
            return None
        if active and not row["active"]:
            count = await db.fetchval(
                "SELECT count(*) FROM devices WHERE account_id = $1 AND active", account_id)
            if limit is not None and count >= limit:
                raise DeviceLimitReached()
        if active is False and row["active"]:
            await deactivate_device(db, device_id, account_id)
        r = await db.fetchrow(
            "UPDATE devices SET name = COALESCE($3, name), send_rate = COALESCE($4, send_rate),"
            " active = COALESCE($5, active) WHERE id = $1 AND account_id = $2"
            f" RETURNING {_DEVICE_COLS}",
            device_id, account_id, name, send_rate, active)
    assert r is not None  # locked above
    return DeviceRow(**dict(r))


async def set_token(db: Db, device_id: uuid.UUID, account_id: uuid.UUID, prefix: str,
                    token_hash: bytes) -> DeviceRow | None:
    """A new token for a WebSocket phone; the old one stops at once, and
    every broker drops the connection made with it (as for a deactivation).
    None: no such device of the account, or not a WebSocket one."""
    r = await db.fetchrow(
        "WITH u AS (UPDATE devices SET token_prefix = $3, token_hash = $4"
        f"  WHERE id = $1 AND account_id = $2 AND transport = '{WEBSOCKET}'"
        f"  RETURNING {_DEVICE_COLS})"
        f" SELECT u.*, pg_notify('{DEVICE_DEACTIVATED}', u.id::text) FROM u",
        device_id, account_id, prefix, token_hash)
    if r is None:
        return None
    fields = dict(r)
    fields.pop("pg_notify")
    return DeviceRow(**fields)


# Brokers LISTEN here: a phone deactivated from the CLI (another process) is
# disconnected at once rather than at its next reconnect.
DEVICE_DEACTIVATED = "smsdora_device_deactivated"


async def deactivate_device(db: Db, device_id: uuid.UUID,
                            account_id: uuid.UUID | None = None) -> bool:
    """Deactivate a device (its token stops working, brokers drop its
    connection). The jobs an SMS Gateway phone listed fail at once with
    `device deactivated` (it may have sent them; no other phone may); the
    ones never listed go to another phone (broker/delivery/sweeper.py).
    Those jobs are locked first in id order, as the phone's report batches
    and listings lock them: in the update's own order it could hold one
    while it waited for one a report batch held (a deadlock, a second)."""
    found = await db.fetchval(
        "WITH u AS (UPDATE devices SET active = false WHERE id = $1"
        " AND ($2::uuid IS NULL OR account_id = $2) RETURNING id),"
        " l AS MATERIALIZED (SELECT m.id FROM messages m, u WHERE m.device_id = u.id"
        "   AND m.status = 'dispatching' AND m.listed_at IS NOT NULL"
        "   AND m.handback IS DISTINCT FROM 'released' ORDER BY m.id FOR UPDATE OF m),"
        " f AS (UPDATE messages m SET status = 'failed', error = 'device deactivated',"
        "   updated_at = now() FROM u WHERE m.device_id = u.id AND m.status = 'dispatching'"
        "   AND m.listed_at IS NOT NULL AND m.handback IS DISTINCT FROM 'released'"
        "   AND m.id IN (SELECT id FROM l)"
        "   RETURNING m.id, m.device_id),"
        " h AS (INSERT INTO message_history (message_id, status, device_id, error)"
        "   SELECT id, 'failed', device_id, 'device deactivated' FROM f ON CONFLICT DO NOTHING)"
        f" SELECT count(pg_notify('{DEVICE_DEACTIVATED}', id::text)) FROM u",
        device_id, account_id,
    )
    return bool(found)


async def flush_last_seen(db: Db, ids: list[uuid.UUID], seen: list[dt.datetime],
                          health: list[str | None], versions: list[str | None],
                          online: list[bool] | list[None] | None = None,
                          node: str | None = None) -> None:
    """Last-seen of many devices in one statement (presence batches them).
    With `online` and `node`: which node holds each socket now, so that the
    CLI (another process) can tell who is online."""
    await db.execute(
        # Locked first in id order: two nodes' flushes of the same phones
        # (one that moved between them) never wait for each other in a cycle.
        "WITH l AS MATERIALIZED (SELECT id FROM devices WHERE id = ANY($1::uuid[])"
        "   ORDER BY id FOR UPDATE)"
        " UPDATE devices d SET last_seen_at = GREATEST(d.last_seen_at, v.seen),"
        " health = COALESCE(v.health::jsonb, d.health), app_version = COALESCE(v.ver, d.app_version),"
        " online_node = CASE WHEN v.online IS NULL THEN d.online_node WHEN v.online THEN $6"
        "   WHEN d.online_node = $6 THEN NULL ELSE d.online_node END"
        " FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::bool[])"
        "   AS v(id, seen, health, ver, online)"
        " WHERE d.id = v.id AND d.id IN (SELECT id FROM l)",
        ids, seen, health, versions, online if online is not None else [None] * len(ids), node,
    )


async def forget_node(db: Db, node: str) -> None:
    """At start-up: sockets this node held before it stopped are gone."""
    await db.execute("UPDATE devices SET online_node = NULL WHERE online_node = $1", node)


async def update_app_info(db: Db, device_id: uuid.UUID, push_token: str | None,
                          sim_cards: list[Any] | None) -> None:
    """What the SMS Gateway app says of itself at every start (`PATCH
    /device`): an absent push token is never cleared, SIM cards are
    replaced when present (the reference server's rules, SMSGATE.md M2)."""
    await db.execute(
        "UPDATE devices SET push_token = COALESCE($2, push_token),"
        " sim_cards = COALESCE($3, sim_cards) WHERE id = $1",
        device_id, push_token or None, sim_cards)


class Deleted(enum.Enum):
    DELETED = "deleted"
    NOT_FOUND = "not found"
    IN_USE = "in use"  # messages or received SMS name it: it stays


async def delete_device(db: Conn, device_id: uuid.UUID, account_id: uuid.UUID) -> Deleted:
    """Delete a device that no message and no received SMS names; it is
    deactivated first in the same transaction (its connection dropped on
    every broker). One that is named stays, unchanged: its messages keep
    their device."""
    async with db.transaction():
        found = await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE device_id = $1)"
            " OR EXISTS (SELECT 1 FROM inbox WHERE device_id = $1)"
            " FROM devices WHERE id = $1 AND account_id = $2 FOR UPDATE", device_id, account_id)
        if found is None:
            return Deleted.NOT_FOUND
        if found:
            return Deleted.IN_USE
        await deactivate_device(db, device_id, account_id)
        await db.execute("DELETE FROM devices WHERE id = $1", device_id)
    return Deleted.DELETED
