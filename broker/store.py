"""The asyncpg pool and every SQL statement. Returns Structs, never records.

Every query that touches account data filters on the caller's account (or on
a device id that was itself resolved from a token of that account).
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
# A short lock id so that two processes applying the schema at once wait for
# each other instead of racing on CREATE ... IF NOT EXISTS.
_MIGRATE_LOCK = 0x5D5D0001

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


class DuplicateEmail(Exception):
    pass


# What "the database cannot be reached" looks like from asyncpg: the edge
# answers these with 503 in the error shape, never a bare 500.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError, ConnectionError, OSError, TimeoutError,
    # A session ended by the server mid-query (fast shutdown) can leave the
    # protocol in an impossible state ("cannot switch to state ..."); the
    # pool discards such a connection when it is released.
    asyncpg.InternalClientError,
    asyncpg.TooManyConnectionsError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="text",
        encoder=lambda v: _json_encoder.encode(v).decode(), decoder=_json_decoder.decode,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections keep no session state (no SET, LISTEN, session locks
    or cursors: LISTEN has its own connection), so the default reset query
    (`RESET ALL; UNLISTEN *; ...`, a second round trip on every release,
    about 7 % of a send's CPU in `make bench`) is skipped. asyncpg still rolls
    back a transaction left open."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session,
        # Fail fast when the database is away: callers answer 503 in seconds
        # rather than hang (connect timeout; per-statement timeout).
        timeout=3, command_timeout=4, max_inactive_connection_lifetime=300,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=5)
    await _init_connection(conn)
    return conn


async def apply_schema(conn: asyncpg.Connection) -> None:
    sql = SCHEMA_PATH.read_text()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK)
        await conn.execute(sql)


# --- rows -------------------------------------------------------------------


class Account(msgspec.Struct, frozen=True):
    id: uuid.UUID
    email: str
    plan: str
    monthly_messages: int
    max_devices: int


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
    monthly_messages: int = 0


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


class Job(msgspec.Struct, frozen=True):
    id: uuid.UUID
    recipient: str
    body: str
    status: str


class MessageRow(msgspec.Struct, frozen=True):
    seq: int
    id: uuid.UUID
    recipient: str
    body: str
    status: str
    error: str | None
    created_at: dt.datetime
    device_id: uuid.UUID | None
    device_name: str | None


class HistoryRow(msgspec.Struct, frozen=True):
    status: str
    at: dt.datetime


class Idempotent(msgspec.Struct, frozen=True):
    request_hash: bytes
    response: bytes


def _rows(cls: type[Any], records: list[asyncpg.Record]) -> list[Any]:
    return [cls(**dict(r)) for r in records]


# --- accounts ---------------------------------------------------------------

_ACCOUNT = """
SELECT a.id, a.email, a.plan, p.monthly_messages, p.max_devices
FROM accounts a JOIN plans p ON p.name = a.plan
"""


async def create_account(db: Any, email: str, plan: str, password_hash: str | None) -> Account:
    try:
        await db.execute(
            "INSERT INTO accounts (id, email, plan, password_hash) VALUES ($1, $2, $3, $4)",
            uuid.uuid4(), email, plan, password_hash,
        )
    except asyncpg.UniqueViolationError:
        raise DuplicateEmail(email) from None
    except asyncpg.ForeignKeyViolationError:
        raise LookupError(f"no plan named {plan!r}") from None
    acc = await account_by_email(db, email)
    assert acc is not None
    return acc


async def account_by_email(db: Any, email: str) -> Account | None:
    r = await db.fetchrow(_ACCOUNT + " WHERE a.email = $1", email)
    return Account(**dict(r)) if r else None


async def account_by_id(db: Any, account_id: uuid.UUID) -> Account | None:
    r = await db.fetchrow(_ACCOUNT + " WHERE a.id = $1", account_id)
    return Account(**dict(r)) if r else None


async def messages_this_month(db: Any, account_id: uuid.UUID, month_start: dt.datetime) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND created_at >= $2",
        account_id, month_start,
    ))


# --- API keys ---------------------------------------------------------------

_KEY_COLS = "k.id, k.account_id, k.name, k.prefix, k.secret_hash, k.scopes, k.rate_limit, " \
            "k.expires_at, k.revoked, k.created_at"


async def insert_key(db: Any, account_id: uuid.UUID, name: str, prefix: str, secret_hash: bytes,
                     scopes: list[str], rate_limit: int | None,
                     expires_at: dt.datetime | None) -> KeyRow:
    r = await db.fetchrow(
        "INSERT INTO api_keys AS k (id, account_id, name, prefix, secret_hash, scopes, rate_limit,"
        " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING " + _KEY_COLS,
        uuid.uuid4(), account_id, name, prefix, secret_hash, scopes, rate_limit, expires_at,
    )
    return KeyRow(**dict(r))


async def key_by_prefix(db: Any, prefix: str) -> KeyRow | None:
    """The one query of an API-key check, with the account's plan joined in."""
    r = await db.fetchrow(
        f"SELECT {_KEY_COLS}, p.monthly_messages FROM api_keys k"
        " JOIN accounts a ON a.id = k.account_id JOIN plans p ON p.name = a.plan"
        " WHERE k.prefix = $1", prefix,
    )
    return KeyRow(**dict(r)) if r else None


async def list_keys(db: Any, account_id: uuid.UUID) -> list[KeyRow]:
    return _rows(KeyRow, await db.fetch(
        f"SELECT {_KEY_COLS} FROM api_keys k WHERE k.account_id = $1 ORDER BY k.created_at",
        account_id,
    ))


async def revoke_key(db: Any, key_id: uuid.UUID, account_id: uuid.UUID | None = None) -> bool:
    """Revoke; `account_id` scopes it (None only for the operator's CLI)."""
    status = await db.execute(
        "UPDATE api_keys SET revoked = true WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)",
        key_id, account_id,
    )
    return bool(status != "UPDATE 0")


async def rotate_key(db: Any, key_id: uuid.UUID, prefix: str, secret_hash: bytes,
                     account_id: uuid.UUID | None = None) -> KeyRow | None:
    """New secret, same id, name, scopes, limit and expiry; the old one stops at once."""
    r = await db.fetchrow(
        "UPDATE api_keys AS k SET prefix = $2, secret_hash = $3 WHERE k.id = $1"
        " AND ($4::uuid IS NULL OR k.account_id = $4) RETURNING " + _KEY_COLS,
        key_id, prefix, secret_hash, account_id,
    )
    return KeyRow(**dict(r)) if r else None


# --- devices ----------------------------------------------------------------

_DEVICE_COLS = ("id, account_id, name, token_hash, send_rate, active, last_seen_at, health,"
                " app_version, online_node")


class DeviceLimitReached(Exception):
    pass


async def insert_device(db: Any, account_id: uuid.UUID, name: str, prefix: str,
                        token_hash: bytes, send_rate: int) -> DeviceRow:
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
            "INSERT INTO devices (id, account_id, name, token_prefix, token_hash, send_rate)"
            f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_DEVICE_COLS}",
            uuid.uuid4(), account_id, name, prefix, token_hash, send_rate,
        )
    return DeviceRow(**dict(r))


async def devices_by_token_prefix(db: Any, prefixes: list[str]) -> dict[str, DeviceRow]:
    """Devices by token prefix, many in one query (a reconnect storm)."""
    rows = await db.fetch(f"SELECT token_prefix, {_DEVICE_COLS} FROM devices"
                          " WHERE token_prefix = ANY($1::text[])", prefixes)
    out = {}
    for r in rows:
        fields = dict(r)
        prefix = fields.pop("token_prefix")
        out[prefix] = DeviceRow(**fields)
    return out


async def list_devices(db: Any, account_id: uuid.UUID) -> list[DeviceRow]:
    return _rows(DeviceRow, await db.fetch(
        f"SELECT {_DEVICE_COLS} FROM devices WHERE account_id = $1 ORDER BY created_at, id",
        account_id,
    ))


# Sent by a trigger on api_keys (schema.sql) with the key's id.
KEY_CHANGED = "smsdora_key_changed"

# Brokers LISTEN here: a phone deactivated from the CLI (another process) is
# disconnected at once rather than at its next reconnect.
DEVICE_DEACTIVATED = "smsdora_device_deactivated"


async def deactivate_device(db: Any, device_id: uuid.UUID,
                            account_id: uuid.UUID | None = None) -> bool:
    found = await db.fetchval(
        "WITH u AS (UPDATE devices SET active = false WHERE id = $1"
        " AND ($2::uuid IS NULL OR account_id = $2) RETURNING id)"
        f" SELECT count(pg_notify('{DEVICE_DEACTIVATED}', id::text)) FROM u",
        device_id, account_id,
    )
    return bool(found)


async def flush_last_seen(db: Any, ids: list[uuid.UUID], seen: list[dt.datetime],
                          health: list[str | None], versions: list[str | None],
                          online: list[bool] | list[None] | None = None,
                          node: str | None = None) -> None:
    """Last-seen of many devices in one statement (presence batches them).
    With `online` and `node`: which node holds each socket now, so that the
    CLI (another process) can tell who is online."""
    await db.execute(
        "UPDATE devices d SET last_seen_at = GREATEST(d.last_seen_at, v.seen),"
        " health = COALESCE(v.health::jsonb, d.health), app_version = COALESCE(v.ver, d.app_version),"
        " online_node = CASE WHEN v.online IS NULL THEN d.online_node WHEN v.online THEN $6"
        "   WHEN d.online_node = $6 THEN NULL ELSE d.online_node END"
        " FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::bool[])"
        "   AS v(id, seen, health, ver, online)"
        " WHERE d.id = v.id",
        ids, seen, health, versions, online if online is not None else [None] * len(ids), node,
    )


async def forget_node(db: Any, node: str) -> None:
    """At start-up: sockets this node held before it stopped are gone."""
    await db.execute("UPDATE devices SET online_node = NULL WHERE online_node = $1", node)


# --- messages ---------------------------------------------------------------

# One statement, one round trip: the message and its first history rows.
# `queued` is always the first row ("the history of every message begins with
# queued, the moment it was accepted").
_INSERT_MESSAGE = """
WITH ok AS (
    SELECT ($9::uuid IS NULL OR EXISTS (
               SELECT 1 FROM api_keys WHERE id = $9 AND prefix = $10 AND NOT revoked
               AND (expires_at IS NULL OR expires_at > $8))) AS key_ok,
           EXISTS (SELECT 1 FROM devices WHERE id = $3 AND account_id = $2 AND active)
               AS device_ok
), m AS (
    INSERT INTO messages (id, account_id, device_id, recipient, body, status, expires_at, created_at,
                          updated_at)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8 FROM ok WHERE ok.key_ok AND ok.device_ok
    RETURNING id, created_at
), h AS (
    INSERT INTO message_history (message_id, status, at, device_id)
    SELECT m.id, s.status, m.created_at, $3 FROM m,
           unnest(CASE WHEN $6 = 'queued' THEN ARRAY['queued'] ELSE ARRAY['queued', $6] END)
           AS s(status)
)
SELECT key_ok, device_ok FROM ok
"""

WRITTEN, KEY_GONE, DEVICE_GONE = "written", "key", "device"


async def insert_message(db: Any, message_id: uuid.UUID, account_id: uuid.UUID,
                         device_id: uuid.UUID, recipient: str, body: str, status: str,
                         expires_at: dt.datetime | None, created_at: dt.datetime,
                         key_id: uuid.UUID | None = None, key_prefix: str | None = None) -> str:
    """The message and its first history rows, in one statement, checked in
    the same statement against what presence and the key cache may not have
    heard of yet: the API key (revoked, rotated, expired: KEY_GONE) and the
    device (deactivated: DEVICE_GONE). Nothing is written unless WRITTEN."""
    r = await db.fetchrow(_INSERT_MESSAGE, message_id, account_id, device_id, recipient, body,
                          status, expires_at, created_at, key_id, key_prefix)
    if not r["key_ok"]:
        return KEY_GONE
    return WRITTEN if r["device_ok"] else DEVICE_GONE


async def idempotent_response(db: Any, account_id: uuid.UUID, key: str,
                              since: dt.datetime) -> Idempotent | None:
    r = await db.fetchrow(
        "SELECT request_hash, response FROM idempotency_keys"
        " WHERE account_id = $1 AND key = $2 AND created_at >= $3",
        account_id, key, since,
    )
    return Idempotent(**dict(r)) if r else None


async def claim_idempotency(db: Any, account_id: uuid.UUID, key: str, request_hash: bytes,
                            message_id: uuid.UUID, response: bytes, since: dt.datetime) -> bool:
    """Take the key for this request. Inside the send transaction: a concurrent
    twin blocks on the primary key until we commit, then finds our row. A row
    older than 24 h is taken over."""
    r = await db.fetchval(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, message_id, response)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (account_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
        "   message_id = EXCLUDED.message_id, response = EXCLUDED.response, created_at = now()"
        " WHERE idempotency_keys.created_at < $6"
        " RETURNING true",
        account_id, key, request_hash, message_id, response, since,
    )
    return bool(r)


async def set_idempotent_response(db: Any, account_id: uuid.UUID, key: str,
                                  response: bytes) -> None:
    """The response to replay, written in the transaction that claimed the key."""
    await db.execute(
        "UPDATE idempotency_keys SET response = $3 WHERE account_id = $1 AND key = $2",
        account_id, key, response,
    )


_MESSAGE_COLS = """
m.seq, m.id, m.recipient, m.body, m.status, m.error, m.created_at, m.device_id,
d.name AS device_name
"""


async def get_message(db: Any, account_id: uuid.UUID,
                      message_id: uuid.UUID) -> tuple[MessageRow, list[HistoryRow]] | None:
    r = await db.fetchrow(
        f"SELECT {_MESSAGE_COLS} FROM messages m LEFT JOIN devices d ON d.id = m.device_id"
        " WHERE m.id = $1 AND m.account_id = $2", message_id, account_id,
    )
    if r is None:
        return None
    hist = await db.fetch(
        "SELECT status, at FROM message_history WHERE message_id = $1 ORDER BY at, "
        " array_position(ARRAY['queued','dispatching','sending','sent','delivered','failed'], status)",
        message_id,
    )
    return MessageRow(**dict(r)), _rows(HistoryRow, hist)


async def list_messages(db: Any, account_id: uuid.UUID, status: str | None, limit: int,
                        before_seq: int | None) -> list[MessageRow]:
    return _rows(MessageRow, await db.fetch(
        f"SELECT {_MESSAGE_COLS} FROM messages m LEFT JOIN devices d ON d.id = m.device_id"
        " WHERE m.account_id = $1 AND ($2::text IS NULL OR m.status = $2)"
        " AND ($3::bigint IS NULL OR m.seq < $3)"
        " ORDER BY m.seq DESC LIMIT $4",
        account_id, status, before_seq, limit,
    ))


class OpenJobs(NamedTuple):
    active: bool  # the device is still active (not deactivated meanwhile)
    jobs: list[Job]  # oldest first


async def open_jobs(db: Any, device_ids: list[uuid.UUID],
                    statuses: list[str]) -> dict[uuid.UUID, OpenJobs]:
    """For each device: whether it is active, and its jobs in the given
    statuses, oldest first (redelivery on connect); many devices in one
    query (a reconnect storm). A device that does not exist is left out."""
    rows = await db.fetch(
        "SELECT d.id AS device_id, d.active, m.id, m.recipient, m.body, m.status"
        " FROM devices d LEFT JOIN messages m"
        "   ON m.device_id = d.id AND m.status = ANY($2::text[])"
        " WHERE d.id = ANY($1::uuid[]) ORDER BY d.id, m.seq",
        device_ids, statuses,
    )
    out: dict[uuid.UUID, OpenJobs] = {}
    for r in rows:
        found = out.get(r["device_id"])
        if found is None:
            found = out[r["device_id"]] = OpenJobs(r["active"], [])
        if r["id"] is not None:
            found.jobs.append(Job(id=r["id"], recipient=r["recipient"], body=r["body"],
                                  status=r["status"]))
    return out


async def claim_queued(db: Any, account_id: uuid.UUID, device_id: uuid.UUID,
                       limit: int) -> list[Job]:
    """Move up to `limit` of the account's oldest queued messages to
    `dispatching` on this device, with their history rows, in one statement."""
    return _rows(Job, await db.fetch(
        """
        WITH c AS (
            SELECT id FROM messages WHERE account_id = $1 AND status = 'queued'
            ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE messages m SET status = 'dispatching', device_id = $2, updated_at = now()
            FROM c WHERE m.id = c.id
            RETURNING m.id, m.recipient, m.body, m.status, m.seq
        ), h AS (
            INSERT INTO message_history (message_id, status, device_id)
            SELECT id, 'dispatching', $2 FROM u ON CONFLICT DO NOTHING
        )
        SELECT id, recipient, body, status FROM u ORDER BY seq
        """,
        account_id, device_id, limit,
    ))


async def queued_count(db: Any, account_id: uuid.UUID) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND status = 'queued'", account_id))


class Held(msgspec.Struct, frozen=True):
    id: uuid.UUID
    device_id: uuid.UUID | None
    status: str
    error: str | None


async def held_jobs(db: Any, account_id: uuid.UUID, ids: list[uuid.UUID]) -> list[Held]:
    """Owner and status of the jobs a phone says it holds, in one query."""
    return _rows(Held, await db.fetch(
        "SELECT id, device_id, status, error FROM messages"
        " WHERE account_id = $1 AND id = ANY($2::uuid[])", account_id, ids,
    ))


async def lock_for_reports(db: Any, ids: list[uuid.UUID]) -> list[Held]:
    """Lock the messages a batch of reports names, in id order (two batches
    can never wait on each other in a cycle)."""
    return _rows(Held, await db.fetch(
        "SELECT id, device_id, status, error FROM messages WHERE id = ANY($1::uuid[])"
        " ORDER BY id FOR UPDATE", ids,
    ))


async def write_moves(db: Any, moved: list[Held]) -> None:
    await db.execute(
        "UPDATE messages m SET status = v.status, error = v.error, updated_at = now()"
        " FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(id, status, error)"
        " WHERE m.id = v.id",
        [h.id for h in moved], [h.status for h in moved], [h.error for h in moved],
    )


async def write_history(db: Any,
                        rows: list[tuple[uuid.UUID, str, uuid.UUID, str | None]]) -> None:
    await db.execute(
        "INSERT INTO message_history (message_id, status, device_id, error)"
        " SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[])"
        " ON CONFLICT DO NOTHING",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
    )


# --- the lifecycle's clocks (broker/sweeper.py) -----------------------------


class Stopped(msgspec.Struct, frozen=True):
    id: uuid.UUID
    device_id: uuid.UUID | None
    was: str


async def fail_due(db: Any, statuses: list[str], column: str, before: dt.datetime, error: str,
                   limit: int = 1000) -> list[Stopped]:
    """Fail (with `error`) up to `limit` messages in `statuses` whose `column`
    (expires_at or updated_at) is before `before`, with their history rows.
    SKIP LOCKED: a row a phone's report holds is left to that report; if the
    report moved it on, it no longer matches next time."""
    assert column in ("expires_at", "updated_at")
    return _rows(Stopped, await db.fetch(
        f"""
        WITH due AS (
            SELECT id, status AS was FROM messages
            WHERE status = ANY($1::text[]) AND {column} < $2
            ORDER BY {column} LIMIT $4 FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE messages m SET status = 'failed', error = $3, updated_at = now()
            FROM due WHERE m.id = due.id
            RETURNING m.id, m.device_id, due.was
        ), h AS (
            INSERT INTO message_history (message_id, status, device_id, error)
            SELECT id, 'failed', device_id, $3 FROM u ON CONFLICT DO NOTHING
        )
        SELECT id, device_id, was FROM u
        """,
        statuses, before, error, limit,
    ))


class Unacked(msgspec.Struct, frozen=True):
    id: uuid.UUID
    account_id: uuid.UUID
    device_id: uuid.UUID
    recipient: str
    body: str
    status: str
    last_seen_at: dt.datetime | None
    active: bool


async def unacked_jobs(db: Any, before: dt.datetime, accounts: list[uuid.UUID],
                       limit: int = 500) -> list[Unacked]:
    """`dispatching` jobs handed out before `before` whose device has not been
    seen since then (or is deactivated): candidates for another device."""
    return _rows(Unacked, await db.fetch(
        "SELECT m.id, m.account_id, m.device_id, m.recipient, m.body, m.status, d.last_seen_at,"
        " d.active FROM messages m JOIN devices d ON d.id = m.device_id"
        " WHERE m.status = 'dispatching' AND m.updated_at < $1"
        " AND (d.last_seen_at IS NULL OR d.last_seen_at < $1 OR NOT d.active)"
        " AND m.account_id = ANY($3::uuid[])"
        " ORDER BY m.seq LIMIT $2",
        before, limit, accounts,
    ))


async def reassign(db: Any, message_id: uuid.UUID, old_device: uuid.UUID,
                   new_device: uuid.UUID) -> bool:
    """Move a job that was never acked to another device. Conditional on the
    old owner and status: an ack stored meanwhile wins, and the job stays."""
    status = await db.execute(
        "UPDATE messages SET device_id = $3, updated_at = now()"
        " WHERE id = $1 AND device_id = $2 AND status = 'dispatching'",
        message_id, old_device, new_device,
    )
    return bool(status == "UPDATE 1")


async def ping(db: Any) -> None:
    await db.fetchval("SELECT 1")
