"""Many sends in one statement and one commit (broker/delivery/batch.py)."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import NamedTuple

import asyncpg

from broker.store.messages import Inserted, insert_message
from broker.store.pool import Conn, Db
from broker.store.usage import STRIPES, Quota

# Many sends in one statement and one commit (broker/delivery/batch.py): the
# rows come as arrays; each is checked as `_INSERT_MESSAGE` checks one (key,
# device) and takes its quota unit: the units of one account and month
# from one stripe with room, the first from a stripe picked at random by
# the caller ($13: concurrent batches of one account take different stripes
# and commit without waiting for each other), the stripe
# updated once by its count under `used + n <= cap`, re-checked on the
# newest row if a concurrent send held it. A row whose stripe could not
# take its share, or that found no month or no room, or a changed plan, is
# not written and says so: the caller sends it again alone
# (`insert_message`, which tells those cases apart). So a row fails alone;
# the others are written and committed together.
_INSERT_MESSAGES = """
WITH r AS MATERIALIZED (
    SELECT v.*,
           (v.key_id IS NULL OR EXISTS (
               SELECT 1 FROM api_keys k WHERE k.id = v.key_id AND k.prefix = v.key_prefix
               AND NOT k.revoked AND (k.expires_at IS NULL OR k.expires_at > v.created_at)))
               AS key_ok,
           (v.device_id IS NULL OR EXISTS (
               SELECT 1 FROM devices d WHERE d.id = v.device_id AND d.account_id = v.account_id
               AND d.active)) AS device_ok
      FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                  $7::timestamptz[], $8::timestamptz[], $9::uuid[], $10::text[], $11::date[],
                  $12::int[])
           WITH ORDINALITY AS v(id, account_id, device_id, recipient, body, status, expires_at,
                                created_at, key_id, key_prefix, month, lim, ord)
), need AS MATERIALIZED (
    SELECT ord, account_id, month, lim,
           row_number() OVER (PARTITION BY account_id, month, lim ORDER BY ord) AS rn
      FROM r WHERE key_ok AND device_ok AND month IS NOT NULL
), room AS MATERIALIZED (
    -- One stripe for each account and month: the first with room from
    -- stripe $13 on. A batch locks one stripe an account (with several
    -- stripes each, two batches waited for each other in a cycle:
    -- PostgreSQL's deadlock check, a second, then a 500). The stripes of
    -- several accounts are locked in the order of the update's join: two
    -- batches of the same accounts that drew the same stripes, planned
    -- differently, can still wait in a cycle, rarely; one is ended after
    -- a second and its rows go one by one (a stall, no failure). Locking
    -- them first in account order cost PostgreSQL 10-20 % more a row in
    -- batches of 8 (docs/PERFORMANCE.md), so it is not done.
    SELECT DISTINCT ON (u.account_id, u.month)
           u.account_id, u.month, u.sized_for AS lim, u.stripe, u.cap - u.used AS room
      FROM account_usage u
      JOIN (SELECT DISTINCT account_id, month, lim FROM need) g
        ON u.account_id = g.account_id AND u.month = g.month AND u.sized_for = g.lim
     WHERE u.used < u.cap
     ORDER BY u.account_id, u.month, (u.stripe + $13) % $14
), alloc AS MATERIALIZED (
    SELECT n.ord, m.account_id, m.month, m.lim, m.stripe
      FROM need n JOIN room m
        ON m.account_id = n.account_id AND m.month = n.month AND m.lim = n.lim
       AND n.rn <= m.room
), take AS MATERIALIZED (
    SELECT account_id, month, lim, stripe, count(*)::int AS n
      FROM alloc GROUP BY account_id, month, lim, stripe ORDER BY account_id, month, stripe
), q AS (
    UPDATE account_usage u SET used = u.used + t.n
      FROM take t
     WHERE u.account_id = t.account_id AND u.month = t.month AND u.stripe = t.stripe
       AND u.sized_for = t.lim AND u.used + t.n <= u.cap
    RETURNING u.account_id, u.month, u.stripe
), w AS MATERIALIZED (
    SELECT r.* FROM r
     WHERE r.key_ok AND r.device_ok
       AND (r.month IS NULL OR EXISTS (
            SELECT 1 FROM alloc a JOIN q
              ON q.account_id = a.account_id AND q.month = a.month AND q.stripe = a.stripe
             WHERE a.ord = r.ord))
), m AS (
    INSERT INTO messages (id, account_id, device_id, recipient, body, status, expires_at,
                          created_at, updated_at)
    SELECT id, account_id, device_id, recipient, body, status, expires_at, created_at, created_at
      FROM w ORDER BY ord
    RETURNING id
), h AS (
    INSERT INTO message_history (message_id, status, at, device_id)
    SELECT w.id, s.status, w.created_at, w.device_id FROM w,
           unnest(CASE WHEN w.status = 'queued' THEN ARRAY['queued']
                       ELSE ARRAY['queued', w.status] END) AS s(status)
     WHERE w.id IN (SELECT id FROM m)
)
SELECT r.ord, r.key_ok, r.device_ok, EXISTS (SELECT 1 FROM m WHERE m.id = r.id) AS written
  FROM r ORDER BY r.ord
"""


class Claim(NamedTuple):
    """A send's Idempotency-Key (contract section 3), claimed in the
    transaction that writes its message, with the response to replay."""

    key: str
    request_hash: bytes
    response: bytes
    since: dt.datetime  # a claim older than this is over: the key is free


class NewMessage(NamedTuple):
    """One row of `insert_messages`: `insert_message`'s arguments (and, for
    `insert_keyed`, its key's claim)."""

    id: uuid.UUID
    account_id: uuid.UUID
    device_id: uuid.UUID | None
    recipient: str
    body: str
    status: str
    expires_at: dt.datetime | None
    created_at: dt.datetime
    key_id: uuid.UUID | None
    key_prefix: str | None
    quota: Quota | None
    claim: Claim | None = None


async def insert_row(db: Db, row: NewMessage) -> Inserted:
    """One row through the one-row statement (`insert_message`); its claim
    is the caller's."""
    return await insert_message(db, *row[:-1])


# The keys of a batch of keyed sends, in one statement. A key a concurrent
# request holds uncommitted is waited for (then it is that one's); a claim
# older than its window is taken over, as `claim_idempotency` does. Rows in
# key order: two batches wait for each other's keys in one order only.
_CLAIM_KEYS = """
INSERT INTO idempotency_keys (account_id, key, request_hash, message_id, response)
SELECT account_id, key, request_hash, message_id, response
  FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::uuid[], $5::bytea[])
       WITH ORDINALITY AS v(account_id, key, request_hash, message_id, response, ord)
 ORDER BY ord
ON CONFLICT (account_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
   message_id = EXCLUDED.message_id, response = EXCLUDED.response, created_at = now()
 WHERE idempotency_keys.created_at < $6
RETURNING message_id
"""

# The keys of the rows whose message was not written (a revoked key, a
# deactivated device, a quota unit the batch could not take), let go in
# the same transaction: free for that request's next try.
_LET_GO = """
DELETE FROM idempotency_keys k USING unnest($1::uuid[], $2::text[], $3::uuid[])
    AS v(account_id, key, message_id)
 WHERE k.account_id = v.account_id AND k.key = v.key AND k.message_id = v.message_id
"""

# Fewer rows than this go through the one-row statement inside the batch's
# transaction (the batch statement for one row cost PostgreSQL three one-row
# INSERTs: broker/delivery/batch.py).
_SMALL = 3
# How long a batch's claim waits for a key another transaction holds (a twin
# at another node commits in milliseconds) before the batch gives way: one
# stuck request's key would otherwise hold every keyed send of the batch,
# of any account, and a pool connection. Each row then goes alone.
KEY_WAIT = "200ms"
_AGAIN = (Inserted.CONTENDED, Inserted.MONTH_UNOPENED, Inserted.PLAN_CHANGED)


async def insert_keyed(db: Conn, rows: list[NewMessage]) -> list[Inserted | None]:
    """Sends with an Idempotency-Key (each row's `claim`) in one
    transaction: the keys claimed in one statement, then the messages of
    the rows whose key is theirs, and the keys of those not written let go,
    all committed together. For each row: KEY_TAKEN (another request's key,
    a twin in this batch included: nothing written), or what
    `insert_messages` says (None: nothing written, its key free again: send
    it alone). A claim older than the oldest row's `since` is taken over.
    A key held past KEY_WAIT: nothing written, every row None."""
    order: list[int] = []
    keys: set[tuple[uuid.UUID, str]] = set()
    for i in sorted(range(len(rows)), key=lambda i: (rows[i].account_id, _claim(rows[i]).key)):
        if (rows[i].account_id, _claim(rows[i]).key) not in keys:  # a twin: the first claims
            keys.add((rows[i].account_id, _claim(rows[i]).key))
            order.append(i)
    out: list[Inserted | None] = [Inserted.KEY_TAKEN] * len(rows)
    try:
        return await _claim_and_insert(db, rows, order, out)
    except asyncpg.LockNotAvailableError:
        return [None] * len(rows)  # rolled back


async def _claim_and_insert(db: Conn, rows: list[NewMessage], order: list[int],
                            out: list[Inserted | None]) -> list[Inserted | None]:
    async with db.transaction():
        await db.execute(f"SET LOCAL lock_timeout = '{KEY_WAIT}'")
        claimed = {r["message_id"] for r in await db.fetch(
            _CLAIM_KEYS, [rows[i].account_id for i in order],
            [_claim(rows[i]).key for i in order], [_claim(rows[i]).request_hash for i in order],
            [rows[i].id for i in order], [_claim(rows[i]).response for i in order],
            min(_claim(r).since for r in rows))}
        mine = [i for i in range(len(rows)) if rows[i].id in claimed]
        written: list[Inserted | None] = []
        if len(mine) >= _SMALL:
            written = await insert_messages(db, [rows[i] for i in mine])
        for i in mine[len(written):]:
            one = await insert_row(db, rows[i])
            written.append(None if one in _AGAIN else one)
        for i, got in zip(mine, written, strict=True):
            out[i] = got
        let_go = [rows[i] for i, got in zip(mine, written, strict=True)
                  if got is not Inserted.WRITTEN]
        if let_go:
            await db.execute(_LET_GO, [r.account_id for r in let_go],
                             [_claim(r).key for r in let_go], [r.id for r in let_go])
    return out


def _claim(row: NewMessage) -> Claim:
    assert row.claim is not None, "a keyed send without its key"
    return row.claim


async def insert_messages(db: Db, rows: list[NewMessage]) -> list[Inserted | None]:
    """Write many messages in one statement (one commit, unless `db` is in a
    transaction); for each row: WRITTEN, KEY_GONE, DEVICE_GONE, or None when
    its quota unit could not be taken in the batch (send it alone with
    `insert_message`, which says why or writes it)."""
    found = await db.fetch(
        _INSERT_MESSAGES, [r.id for r in rows], [r.account_id for r in rows],
        [r.device_id for r in rows], [r.recipient for r in rows], [r.body for r in rows],
        [r.status for r in rows], [r.expires_at for r in rows], [r.created_at for r in rows],
        [r.key_id for r in rows], [r.key_prefix for r in rows],
        [r.quota.month if r.quota is not None else None for r in rows],
        [r.quota.limit if r.quota is not None else None for r in rows],
        random.randrange(STRIPES), STRIPES)
    out: list[Inserted | None] = []
    for f in found:
        if not f["key_ok"]:
            out.append(Inserted.KEY_GONE)
        elif not f["device_ok"]:
            out.append(Inserted.DEVICE_GONE)
        else:
            out.append(Inserted.WRITTEN if f["written"] else None)
    return out
