"""Messages as the client API sees them: the send's INSERT, idempotency, reads."""

from __future__ import annotations

import datetime as dt
import enum
import random
import uuid
from typing import NamedTuple

import msgspec

from broker.store.pool import Db, rows_of
from broker.store.usage import STRIPES, Quota


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


# One statement, one round trip: the month's quota unit, the message and its
# first history rows. `queued` is always the first row ("the history of every
# message begins with queued, the moment it was accepted"). The quota is a
# unit of one of the month's stripes with room (store/usage.py), one picked
# at random, taken under that row's lock (`used < cap` checked again on the
# newest version of the row when a concurrent send held it), so concurrent
# sends, in one process or many, never overshoot the plan; it is taken only
# when the message is written, and a failure of the statement (or of the
# caller's transaction) gives it back with everything else.
_INSERT_MESSAGE = """
WITH ok AS (
    SELECT ($9::uuid IS NULL OR EXISTS (
               SELECT 1 FROM api_keys WHERE id = $9 AND prefix = $10 AND NOT revoked
               AND (expires_at IS NULL OR expires_at > $8))) AS key_ok,
           ($3::uuid IS NULL OR EXISTS (
               SELECT 1 FROM devices WHERE id = $3 AND account_id = $2 AND active))
               AS device_ok
), pick AS MATERIALIZED (
    -- Stripe $13, chosen at random by the caller: one row read. Only when it
    -- is full (the month nearly used up) are the others looked at.
    SELECT COALESCE(
        (SELECT stripe FROM account_usage WHERE account_id = $2 AND month = $11
            AND stripe = $13 AND sized_for = $12 AND used < cap),
        (SELECT stripe FROM account_usage WHERE account_id = $2 AND month = $11
            AND sized_for = $12 AND used < cap ORDER BY random() LIMIT 1)) AS stripe
      FROM ok WHERE ok.key_ok AND ok.device_ok AND $11::date IS NOT NULL
), q AS (
    UPDATE account_usage u SET used = u.used + 1
     WHERE u.account_id = $2 AND u.month = $11 AND u.stripe = (SELECT stripe FROM pick)
       AND u.sized_for = $12 AND u.used < u.cap
    RETURNING 1
), m AS (
    INSERT INTO messages (id, account_id, device_id, recipient, body, status, expires_at, created_at,
                          updated_at)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8 FROM ok WHERE ok.key_ok AND ok.device_ok
       AND ($11::date IS NULL OR EXISTS (SELECT 1 FROM q))
    RETURNING id, created_at
), h AS (
    INSERT INTO message_history (message_id, status, at, device_id)
    SELECT m.id, s.status, m.created_at, $3 FROM m,
           unnest(CASE WHEN $6 = 'queued' THEN ARRAY['queued'] ELSE ARRAY['queued', $6] END)
           AS s(status)
)
SELECT key_ok, device_ok,
       CASE WHEN $11::date IS NULL OR EXISTS (SELECT 1 FROM q) THEN 'taken'
            WHEN EXISTS (SELECT 1 FROM pick WHERE stripe IS NOT NULL) THEN 'contended'
            ELSE (SELECT CASE WHEN count(*) = 0 THEN 'unopened'
                              WHEN bool_and(sized_for = $12) THEN 'over' ELSE 'resized' END
                    FROM account_usage WHERE account_id = $2 AND month = $11)
       END AS quota
  FROM ok
"""


class Inserted(enum.Enum):
    """What `insert_message` did. Nothing is written unless WRITTEN."""

    WRITTEN = "written"
    KEY_GONE = "key"  # the API key was revoked, rotated or expired meanwhile
    DEVICE_GONE = "device"  # the device was deactivated meanwhile
    OVER_QUOTA = "over"  # every stripe of the month's usage is at its cap
    # The stripe picked was filled by a concurrent send meanwhile: again.
    CONTENDED = "contended"
    MONTH_UNOPENED = "unopened"  # the month has no usage yet: `open_month`, then again
    PLAN_CHANGED = "resized"  # the caps were cut for another limit: `resize_month`, again
    # Its Idempotency-Key is another request's (a batch of keyed sends,
    # store/sends.py): that request's response is the one to give.
    KEY_TAKEN = "taken"


async def insert_message(db: Db, message_id: uuid.UUID, account_id: uuid.UUID,
                         device_id: uuid.UUID | None, recipient: str, body: str, status: str,
                         expires_at: dt.datetime | None, created_at: dt.datetime,
                         key_id: uuid.UUID | None = None,
                         key_prefix: str | None = None, quota: Quota | None = None) -> Inserted:
    """The message and its first history rows, in one statement, checked in
    the same statement against what presence and the key cache may not have
    heard of yet: the API key (revoked, rotated, expired: KEY_GONE) and the
    device (deactivated: DEVICE_GONE); with a `quota`, a unit of the month's
    usage is taken in it too (OVER_QUOTA; CONTENDED, MONTH_UNOPENED and
    PLAN_CHANGED ask the caller to try again, after opening or re-cutting the
    month). Nothing is written unless WRITTEN. Without a quota (tests,
    tools) nothing is counted."""
    month, limit = quota if quota is not None else (None, None)
    r = await db.fetchrow(_INSERT_MESSAGE, message_id, account_id, device_id, recipient, body,
                          status, expires_at, created_at, key_id, key_prefix, month, limit,
                          random.randrange(STRIPES))
    assert r is not None  # the statement always answers one row
    if not r["key_ok"]:
        return Inserted.KEY_GONE
    if not r["device_ok"]:
        return Inserted.DEVICE_GONE
    return _QUOTA[r["quota"]]


_QUOTA = {"taken": Inserted.WRITTEN, "over": Inserted.OVER_QUOTA,
          "contended": Inserted.CONTENDED, "unopened": Inserted.MONTH_UNOPENED,
          "resized": Inserted.PLAN_CHANGED}


async def idempotent_responses(db: Db, keys: list[tuple[uuid.UUID, str]],
                               since: dt.datetime) -> dict[tuple[uuid.UUID, str], Idempotent]:
    """The claims of these (account, Idempotency-Key) pairs made since
    `since`, in one query (the sends of one moment: broker/lookups.py)."""
    rows = await db.fetch(
        "SELECT i.account_id, i.key, i.request_hash, i.response FROM idempotency_keys i"
        " JOIN unnest($1::uuid[], $2::text[]) AS v(account_id, key)"
        "   ON i.account_id = v.account_id AND i.key = v.key"
        " WHERE i.created_at >= $3",
        [k[0] for k in keys], [k[1] for k in keys], since)
    return {(r["account_id"], r["key"]): Idempotent(r["request_hash"], r["response"])
            for r in rows}


async def claim_idempotency(db: Db, account_id: uuid.UUID, key: str, request_hash: bytes,
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


async def set_idempotent_response(db: Db, account_id: uuid.UUID, key: str,
                                  response: bytes) -> None:
    """The response to replay, written in the transaction that claimed the key."""
    await db.execute(
        "UPDATE idempotency_keys SET response = $3 WHERE account_id = $1 AND key = $2",
        account_id, key, response,
    )


async def purge_idempotency(db: Db, before: dt.datetime, batch: int) -> int:
    """Delete at most `batch` idempotency rows created before `before`, oldest
    first; how many went. Rows a send holds locked are skipped, not waited for."""
    status = await db.execute(
        "DELETE FROM idempotency_keys WHERE (account_id, key) IN ("
        " SELECT account_id, key FROM idempotency_keys WHERE created_at < $1"
        " ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        before, batch,
    )
    return int(status.rsplit(" ", 1)[1])


_MESSAGE_COLS = """
m.seq, m.id, m.recipient, m.body, m.status, m.error, m.created_at, m.device_id,
d.name AS device_name
"""


async def get_message(db: Db, account_id: uuid.UUID | None,
                      message_id: uuid.UUID) -> tuple[MessageRow, list[HistoryRow]] | None:
    """One message and its history; `account_id` scopes it (None only for
    the operator's CLI)."""
    r = await db.fetchrow(
        f"SELECT {_MESSAGE_COLS} FROM messages m LEFT JOIN devices d ON d.id = m.device_id"
        " WHERE m.id = $1 AND ($2::uuid IS NULL OR m.account_id = $2)", message_id, account_id,
    )
    if r is None:
        return None
    hist = await db.fetch(
        "SELECT status, at FROM message_history WHERE message_id = $1 ORDER BY at, "
        " array_position(ARRAY['queued','dispatching','sending','sent','delivered','failed'], status)",
        message_id,
    )
    return MessageRow(**dict(r)), rows_of(HistoryRow, hist)


class MessageFilter(NamedTuple):
    """What `GET /messages` narrows the account's messages to besides their
    status (None: any)."""

    device_id: uuid.UUID | None = None
    recipient: str | None = None  # E.164
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before


_ANY = MessageFilter()


async def list_messages(db: Db, account_id: uuid.UUID, status: str | None, limit: int,
                        before_seq: int | None, where: MessageFilter = _ANY) -> list[MessageRow]:
    """The account's messages, newest first: `limit` of them before the
    keyset position `before_seq`, in `status` (None: any) and `where`."""
    return rows_of(MessageRow, await db.fetch(
        f"SELECT {_MESSAGE_COLS} FROM messages m LEFT JOIN devices d ON d.id = m.device_id"
        " WHERE m.account_id = $1 AND ($2::text IS NULL OR m.status = $2)"
        " AND ($3::bigint IS NULL OR m.seq < $3)"
        " AND ($5::uuid IS NULL OR m.device_id = $5) AND ($6::text IS NULL OR m.recipient = $6)"
        " AND ($7::timestamptz IS NULL OR m.created_at >= $7)"
        " AND ($8::timestamptz IS NULL OR m.created_at < $8)"
        " ORDER BY m.seq DESC LIMIT $4",
        account_id, status, before_seq, limit, where.device_id, where.recipient,
        where.since, where.until,
    ))


class Cancelled(NamedTuple):
    """What `cancel_message` found: the status the message had (None: no
    such message of the account), and whether this call cancelled it."""

    was: str | None
    device_id: uuid.UUID | None
    cancelled: bool


CANCELLED = "cancelled"

# The guard is the UPDATE's own WHERE, evaluated on the row's newest version
# (a phone's ack or an SMS Gateway phone's listing that committed first wins,
# and this changes nothing): only a message no phone may have sent yet, one
# `queued`, or `dispatching` and not listed by an SMS Gateway phone (which
# sends what it lists, with no go-ahead to wait for: CONTRACT section 8).
# `t` locks the row first, so `was` is the status that decided.
_CANCEL = f"""
WITH t AS (
    SELECT id, status, device_id FROM messages WHERE id = $1 AND account_id = $2 FOR UPDATE
), u AS (
    UPDATE messages m SET status = 'failed', error = '{CANCELLED}', updated_at = now()
      FROM t WHERE m.id = t.id AND m.status IN ('queued', 'dispatching') AND m.listed_at IS NULL
    RETURNING m.id, m.device_id
), h AS (
    INSERT INTO message_history (message_id, status, device_id, error)
    SELECT id, 'failed', device_id, '{CANCELLED}' FROM u ON CONFLICT DO NOTHING
)
SELECT t.status AS was, t.device_id, EXISTS (SELECT 1 FROM u) AS cancelled FROM t
"""


async def cancel_message(db: Db, account_id: uuid.UUID, message_id: uuid.UUID) -> Cancelled:
    """Fail the message with error `cancelled`, with its history row, if no
    phone can have sent it yet; one statement."""
    r = await db.fetchrow(_CANCEL, message_id, account_id)
    if r is None:
        return Cancelled(None, None, False)
    return Cancelled(r["was"], r["device_id"], r["cancelled"])


class Changed(NamedTuple):
    """What `changed_messages` found: the rows, oldest change first, and the
    database's clock when it looked."""

    rows: list[MessageRow]
    updated_at: list[dt.datetime]  # each row's
    now: dt.datetime


async def changed_messages(db: Db, account_id: uuid.UUID, after: dt.datetime, from_seq: int,
                           limit: int, where: MessageFilter = _ANY) -> Changed:
    """The account's messages whose row changed after `after` (a send, a
    report, a cancel, the sweeper: each sets `updated_at`), at keyset
    position `from_seq` or newer, narrowed by `where`; at most `limit`, the
    oldest changes first. What a live page asks every time it is woken: the
    seq bound keeps it on the rows of the page (the account's index on
    `(account_id, seq)`), however many messages the account has."""
    records = await db.fetch(
        f"SELECT now() AS now, c.* FROM (SELECT 1) one LEFT JOIN LATERAL ("
        f" SELECT {_MESSAGE_COLS}, m.updated_at"
        " FROM messages m LEFT JOIN devices d ON d.id = m.device_id"
        " WHERE m.account_id = $1 AND m.seq >= $2 AND m.updated_at > $3"
        " AND ($5::uuid IS NULL OR m.device_id = $5) AND ($6::text IS NULL OR m.recipient = $6)"
        " AND ($7::timestamptz IS NULL OR m.created_at >= $7)"
        " AND ($8::timestamptz IS NULL OR m.created_at < $8)"
        " ORDER BY m.updated_at LIMIT $4) c ON true",
        account_id, from_seq, after, limit, where.device_id, where.recipient, where.since,
        where.until,
    )
    now: dt.datetime = records[0]["now"]
    found = [r for r in records if r["id"] is not None]
    return Changed([MessageRow(**{k: r[k] for k in MessageRow.__struct_fields__}) for r in found],
                   [r["updated_at"] for r in found], now)


async def newest_seq(db: Db, account_id: uuid.UUID) -> int:
    """The keyset position of the account's newest message (0: none yet)."""
    return int(await db.fetchval(
        "SELECT COALESCE(max(seq), 0) FROM messages WHERE account_id = $1", account_id))
