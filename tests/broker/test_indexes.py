"""The index set of `messages` and `message_history` (migration 0011,
docs/PERFORMANCE.md "The index set of messages"): every index on them is read
by a statement the broker runs, and the hot lookups read an index, never a
Seq Scan of the table.

An index is written by every send, and again by every change of status (a
status change is never a HOT update: status is indexed), so one that no plan
reads is pure cost; a hot statement that scans the table costs more with
every message kept.

The tables are filled with a spread like a running gateway's and ANALYZEd;
then every store function that reads or writes them is called on an
`Explaining` connection: each statement the function sends is EXPLAINed
first with the very text and arguments it sends (nothing is copied here, so
the test follows the code), then run, in a transaction rolled back after the
call, so that every plan sees the same data. The one statement no function
sends, the history trigger's (0006, as 0013 left it), is read from the
installed function.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from broker import store
from broker.store import accounts, devices, holds, jobs, messages, usage
from protocol import lifecycle

pytestmark = pytest.mark.timeout(60)

TABLES = ("messages", "message_history")
# What the hot statements must not scan: the two tables, and the send's
# idempotency check's own.
SCANNED_NEVER = {*TABLES, "idempotency_keys"}
N_MESSAGES = 20_000


# --- the spread ----------------------------------------------------------------------------

# 20,000 messages over four weeks, one every 2 minutes, of 3 accounts: 80 %,
# 19.5 % and 0.5 % of them (a small customer beside two big ones). The newest
# 300 (10 hours) are a mix of every status; older ones are final (80 %
# delivered, 10 % sent, 10 % failed: the sweeper took what waited longer).
# One phone in 2 of a queued message's is named (the rest wait for any
# phone); a fifth have a ttl; the SMS Gateway phone's jobs are listed, a few
# given back or asked back. Each message has its history up to its status
# (93,610 rows).
_FILL = """
INSERT INTO messages (id, account_id, device_id, recipient, body, status, error, expires_at,
                      created_at, updated_at, listed_at, handback)
SELECT gen_random_uuid(), s.account_id,
       CASE WHEN s.status = 'queued' AND s.i % 2 = 0 THEN NULL ELSE f.id END,
       '+1555' || lpad((s.i * 7919 % 5000)::text, 7, '0'), 'message ' || s.i, s.status,
       CASE WHEN s.status = 'failed' THEN 'no report' END,
       CASE WHEN s.i % 5 = 0 THEN s.created_at + interval '1 hour' END,
       s.created_at,
       CASE WHEN s.status IN ('queued', 'dispatching') THEN s.created_at
            ELSE s.created_at + interval '5 seconds' END,
       CASE WHEN f.transport = 'smsgate' AND s.status <> 'queued'
             AND NOT (s.status = 'dispatching' AND s.i % 7 IN (0, 2))
            THEN s.created_at + interval '1 second' END,
       CASE WHEN f.transport = 'smsgate' AND s.status = 'dispatching'
            THEN CASE s.i % 7 WHEN 0 THEN 'released' WHEN 1 THEN 'requested' END END
  FROM (SELECT i, ($1::uuid[])[CASE WHEN i % 200 < 160 THEN 1 WHEN i % 200 < 199 THEN 2
                                    ELSE 3 END] AS account_id,
               $2::timestamptz - ($3 - i) * interval '2 minutes' AS created_at,
               CASE WHEN i > $3 - 300 THEN (ARRAY['queued', 'dispatching', 'dispatching',
                        'sending', 'sent', 'sent', 'delivered', 'delivered', 'delivered',
                        'failed'])[i * 31 % 10 + 1]
                    ELSE (ARRAY['delivered', 'delivered', 'delivered', 'delivered', 'delivered',
                                'delivered', 'delivered', 'delivered', 'sent', 'failed'])
                         [i * 31 % 10 + 1] END AS status
          FROM generate_series(1, $3) i) s
  JOIN (SELECT id, account_id, transport,
               row_number() OVER (PARTITION BY account_id ORDER BY name) - 1 AS k,
               count(*) OVER (PARTITION BY account_id) AS n
          FROM devices WHERE name <> 'idle') f
    ON f.account_id = s.account_id AND f.k = (s.i / 20) % f.n
 ORDER BY s.i
"""

_HISTORY = """
INSERT INTO message_history (message_id, status, at, device_id, error)
SELECT m.id, h.status, m.created_at + (h.n - 1) * interval '1 second', m.device_id,
       CASE WHEN h.status = 'failed' THEN m.error END
  FROM messages m, unnest(CASE m.status
           WHEN 'queued' THEN ARRAY['queued']
           WHEN 'dispatching' THEN ARRAY['queued', 'dispatching']
           WHEN 'sending' THEN ARRAY['queued', 'dispatching', 'sending']
           WHEN 'sent' THEN ARRAY['queued', 'dispatching', 'sending', 'sent']
           WHEN 'delivered' THEN ARRAY['queued', 'dispatching', 'sending', 'sent', 'delivered']
           ELSE ARRAY['queued', 'dispatching', 'failed'] END) WITH ORDINALITY AS h(status, n)
"""


@dataclass
class Spread:
    now: dt.datetime
    accounts: list[uuid.UUID]  # the biggest first
    phones: dict[uuid.UUID, list[uuid.UUID]]  # per account, the SMS Gateway phone last
    idle: dict[uuid.UUID, uuid.UUID]  # per account (the first two): a phone no message names
    key_id: uuid.UUID
    key_prefix: str
    ids: dict[str, list[uuid.UUID]] = field(default_factory=dict)  # the first account's, newest first


async def fill(db: asyncpg.Connection) -> Spread:
    now = await db.fetchval("SELECT now()")
    accts = [uuid.uuid4() for _ in range(3)]
    fleet = {accts[0]: ["ws 1", "ws 2", "ws 3", "zz smsgate", "idle"],
             accts[1]: ["ws 1", "ws 2", "ws 3", "idle"], accts[2]: ["ws 1"]}
    rows = [(uuid.uuid4(), a, name) for a, names in fleet.items() for name in names]
    await db.execute("INSERT INTO accounts (id, email) SELECT a, 'a' || n || '@example.com'"
                     " FROM unnest($1::uuid[]) WITH ORDINALITY t(a, n)", accts)
    await db.executemany(
        "INSERT INTO devices (id, account_id, name, token_prefix, token_hash, transport)"
        " VALUES ($1::uuid, $2, $3::text, md5($1::uuid::text), '\\x00',"
        "  CASE WHEN $3::text LIKE '%smsgate' THEN 'smsgate' ELSE 'websocket' END)", rows)
    key_id, key_prefix = uuid.uuid4(), "0123abcd"
    await db.execute("INSERT INTO api_keys (id, account_id, prefix, secret_hash, scopes)"
                     " VALUES ($1, $2, $3, '\\x00', '{messages:send}')", key_id, accts[0],
                     key_prefix)
    await db.execute(_FILL, accts, now, N_MESSAGES)
    await db.execute(_HISTORY)
    await db.execute(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, message_id, response,"
        " created_at) SELECT account_id, 'key-' || seq, '\\x00', id, '\\x00', created_at"
        " FROM messages WHERE seq % 7 = 0")
    month = now.date().replace(day=1)
    for a in accts[:2]:  # the small account has not sent this month yet
        await usage.open_month(db, a, month, 1_000_000)
    # After the fill: its history rows fire no events.
    await db.execute("INSERT INTO webhooks (id, account_id, url, events, secret)"
                     " VALUES ($1, $2, 'https://example.com/hook', '{*}', 'whsec_x')",
                     uuid.uuid4(), accts[0])
    await db.execute("ANALYZE")
    by_name = {(a, n): d for d, a, n in rows}
    spread = Spread(now, accts,
                    {a: [by_name[(a, n)] for n in names if n != "idle"]
                     for a, names in fleet.items()},
                    {a: by_name[(a, "idle")] for a in accts[:2]}, key_id, key_prefix)
    for r in await db.fetch("SELECT status, array_agg(id ORDER BY seq DESC) AS ids FROM messages"
                            " WHERE account_id = $1 GROUP BY status", accts[0]):
        spread.ids[r["status"]] = r["ids"]
    return spread


# --- plans ---------------------------------------------------------------------------------


@dataclass(repr=False)
class Statement:
    call: str  # the store function that sent it, and how it was called
    hot: bool
    sql: str
    plan: dict[str, Any]

    def nodes(self) -> Iterator[dict[str, Any]]:
        todo = [self.plan]
        while todo:
            node = todo.pop()
            yield node
            todo.extend(node.get("Plans", []))

    def indexes(self) -> set[str]:
        """The indexes the plan reads, and the unique ones its ON CONFLICT
        checks by name (a DO NOTHING without a target names none)."""
        found = set()
        for node in self.nodes():
            if "Index Name" in node:
                found.add(node["Index Name"])
            found.update(node.get("Conflict Arbiter Indexes", []))
        return found

    def scans(self, tables: set[str]) -> list[str]:
        """How the plan reads `tables`: Seq Scan, Index Scan, Bitmap Heap Scan..."""
        return [n["Node Type"] for n in self.nodes()
                if n.get("Relation Name") in tables and n["Node Type"].endswith("Scan")]

    def seq_scans(self) -> set[str]:
        return {n["Relation Name"] for n in self.nodes() if n["Node Type"] == "Seq Scan"}

    def __repr__(self) -> str:
        return (f"{self.call}: reads {sorted(self.indexes()) or 'no index'},"
                f" Seq Scans {sorted(self.seq_scans()) or 'nothing'}")


def _plan(raw: Any) -> dict[str, Any]:
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return plan


class Explaining:
    """What the store functions are given instead of a connection: each
    statement is EXPLAINed with its arguments, then run on the connection."""

    def __init__(self, conn: asyncpg.Connection, seen: list[Statement]) -> None:
        self.conn = conn
        self.seen = seen
        self.call = ""
        self.hot = False

    async def _explain(self, query: str, args: tuple[Any, ...]) -> None:
        raw = await self.conn.fetchval("EXPLAIN (FORMAT JSON) " + query, *args)
        self.seen.append(Statement(self.call, self.hot, query, _plan(raw)))

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        await self._explain(query, args)
        return await self.conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        await self._explain(query, args)
        return await self.conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        await self._explain(query, args)
        return await self.conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        await self._explain(query, args)
        return await self.conn.execute(query, *args)

    def transaction(self) -> Any:
        return self.conn.transaction()

    async def run(self, call: str, fn: Callable[..., Awaitable[Any]], *args: Any,
                  hot: bool = False) -> None:
        """`fn(self, *args)` in a transaction rolled back after it: the data stays as filled."""
        self.call, self.hot = call, hot
        tr = self.conn.transaction()
        await tr.start()
        try:
            await fn(self, *args)
        finally:
            await tr.rollback()


# The trigger's one statement, from the installed function's source; its
# transition table `new_rows` is stood in for by a temporary table of that
# name holding what the INSERT wrote.
# The trigger's INSERT (after its early return when no endpoint is enabled).
_TRIGGER_BODY = re.compile(r"(INSERT INTO webhook_events .*?);\s*RETURN NULL;", re.S)


async def explain_trigger(db: asyncpg.Connection, seen: list[Statement], call: str, hot: bool,
                          new_rows: str, *args: Any) -> None:
    source = await db.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'smsdora_history_events'")
    body = _TRIGGER_BODY.search(source)
    assert body is not None, source
    async with db.transaction():
        await db.execute("CREATE TEMP TABLE new_rows (LIKE message_history) ON COMMIT DROP")
        await db.execute(f"INSERT INTO new_rows {new_rows}", *args)
        await db.execute("ANALYZE new_rows")
        seen.append(Statement(call, hot, body[1],
                              _plan(await db.fetchval("EXPLAIN (FORMAT JSON) " + body[1]))))


async def statements(db: asyncpg.Connection, s: Spread) -> list[Statement]:
    """Every statement of broker/ that reads or writes messages or
    message_history, with arguments as the broker passes them; and the send's
    idempotency check. `hot`: on the path of every send, report, connect or
    sweep, or a page of the API's or the dashboard's list."""
    seen: list[Statement] = []
    ex = Explaining(db, seen)
    big, mid, small = s.accounts
    phones, smsgate = s.phones[big], s.phones[big][-1]
    month = s.now.date().replace(day=1)
    day_ago = s.now - dt.timedelta(days=1)
    delivered, sending, dispatching = s.ids["delivered"], s.ids["sending"], s.ids["dispatching"]

    # A send (services/messages.py): the idempotency check and claim, the INSERT.
    await ex.run("idempotent_responses", messages.idempotent_responses,
                 [(big, "key-7"), (big, "key-8")], day_ago, hot=True)
    await ex.run("claim_idempotency", messages.claim_idempotency, big, "key-new", b"\0",
                 uuid.uuid4(), b"\0", day_ago, hot=True)
    await ex.run("insert_message", messages.insert_message, uuid.uuid4(), big, phones[0],
                 "+15550000001", "hi", lifecycle.DISPATCHING, None, s.now, s.key_id,
                 s.key_prefix, usage.Quota(month, 1_000_000), hot=True)
    await ex.run("open_month", usage.open_month, small, month, 1_000_000)
    # GET /messages/{id} (and the CLI's, unscoped).
    await ex.run("get_message", messages.get_message, big, delivered[100], hot=True)
    await ex.run("get_message (CLI)", messages.get_message, None, delivered[100])
    # GET /messages and the dashboard's list: a page of 50 and one more.
    where = store.MessageFilter
    page_2 = await db.fetchval("SELECT seq FROM messages WHERE id = $1", delivered[3000])
    ten_days_ago = s.now - dt.timedelta(days=10)
    one_day = where(since=ten_days_ago, until=ten_days_ago + dt.timedelta(days=1))
    for account, name, status, before, f in [
            (big, "newest", None, None, where()),
            (big, "status", lifecycle.DELIVERED, None, where()),
            (big, "a rare status", lifecycle.QUEUED, None, where()),
            (big, "page 2", None, page_2, where()),
            (big, "device", None, None, where(device_id=phones[1])),
            (big, "status and device", lifecycle.FAILED, None, where(device_id=phones[1])),
            (big, "a phone with no message", None, None, where(device_id=s.idle[big])),
            (mid, "a phone with no message", None, None, where(device_id=s.idle[mid])),
            (big, "recipient", None, None, where(recipient="+15550001234")),
            (big, "one day", None, None, one_day),
            (big, "since", None, None, where(since=day_ago)),
            (small, "newest", None, None, where()),
            (small, "status", lifecycle.SENT, None, where()),
            (small, "recipient", None, None, where(recipient="+15550001234")),
            (small, "device", None, None, where(device_id=s.phones[small][0]))]:
        size = "big" if account == big else "mid" if account == mid else "small"
        await ex.run(f"list_messages ({size} account: {name})", messages.list_messages, account,
                     status, 51, before, f, hot=True)
    # The live page: what changed on the rows of its page; where a new page begins.
    newest = await db.fetchval("SELECT max(seq) FROM messages WHERE account_id = $1", big)
    await ex.run("changed_messages", messages.changed_messages, big,
                 s.now - dt.timedelta(seconds=10), newest - 50, 100, hot=True)
    await ex.run("newest_seq (big account)", messages.newest_seq, big)
    await ex.run("newest_seq (small account)", messages.newest_seq, small)
    await ex.run("usage_of", accounts.usage_of, big, month)
    await ex.run("usage_of (month not opened)", accounts.usage_of, small, month)
    await ex.run("cancel_message", messages.cancel_message, big, s.ids["queued"][0])
    # The delivery engine: redelivery on connect, the queue, reports.
    await ex.run("open_jobs", jobs.open_jobs, phones, sorted(lifecycle.REDELIVERED), hot=True)
    await ex.run("claim_queued", jobs.claim_queued, big, phones[0], 10, hot=True)
    await ex.run("queued_count", jobs.queued_count, big, 10_000)
    await ex.run("held_jobs", jobs.held_jobs, big, sending[:20])
    await ex.run("lock_for_reports", jobs.lock_for_reports, sending[:20],
                 [phones[0]] * 20, hot=True)
    await ex.run("write_reports", jobs.write_reports,
                 [jobs.Held(i, None, lifecycle.SENT, None) for i in sending[:20]],
                 [(i, lifecycle.SENT, phones[0], None) for i in sending[:20]], hot=True)
    await ex.run("move_reported", jobs.move_reported,
                 [(i, phones[0], "sending", lifecycle.SENT, None) for i in sending[20:40]],
                 [(i, lifecycle.SENT, phones[0], None) for i in sending[20:40]], hot=True)
    await ex.run("reassign", jobs.reassign, dispatching[0], phones[0], phones[1])
    # Jobs another node committed for phones held here (delivery/remote.py).
    await ex.run("dispatched_jobs", jobs.dispatched_jobs, dispatching[:20], hot=True)
    await ex.run("stray_jobs", jobs.stray_jobs, "node-a", s.now - dt.timedelta(seconds=60),
                 s.now - dt.timedelta(seconds=2), hot=True)
    # The sweeper, with its own arguments (broker/delivery/sweeper.py).
    no_report = s.now - dt.timedelta(hours=24)
    await ex.run("fail_due (no report)", jobs.fail_due, [lifecycle.SENDING], "updated_at",
                 no_report, "no report", hot=True)
    await ex.run("fail_due (no report, listed)", jobs.fail_due, [lifecycle.DISPATCHING],
                 "listed_at", no_report, "no report", hot=True)
    await ex.run("fail_due (expired)", jobs.fail_due, [lifecycle.QUEUED, lifecycle.DISPATCHING],
                 "expires_at", s.now, "expired", 1000, s.now - dt.timedelta(seconds=60), hot=True)
    await ex.run("unacked_jobs", jobs.unacked_jobs, s.now - dt.timedelta(seconds=60), s.accounts,
                 hot=True)
    # SMS Gateway phones (store/holds.py).
    held = await db.fetchval("SELECT id FROM messages WHERE device_id = $1"
                             " AND status = 'dispatching' ORDER BY seq DESC LIMIT 1", smsgate)
    await ex.run("list_held (fifo)", holds.list_held, smsgate, "fifo")
    await ex.run("list_held (lifo)", holds.list_held, smsgate, "lifo")
    await ex.run("release", holds.release, smsgate, held)
    await ex.run("request_handback", holds.request_handback, held, smsgate)
    await ex.run("handbacks_requested", holds.handbacks_requested, smsgate)
    # Devices (store/devices.py).
    await ex.run("deactivate_device", devices.deactivate_device, smsgate, big)
    await ex.run("delete_device (in use)", devices.delete_device, phones[0], big)
    await ex.run("delete_device (no message)", devices.delete_device, s.idle[mid], mid)
    # The trigger on every INSERT into message_history: a send's two rows
    # (hot), and a report batch of 500 (at this table's size, a hash join
    # over the history is the cheaper plan for 500 rows).
    await explain_trigger(db, seen, "history trigger (a send)", True,
                          "SELECT id, s, now(), device_id, NULL FROM messages,"
                          " unnest('{queued,dispatching}'::text[]) s WHERE id = $1", delivered[0])
    await explain_trigger(db, seen, "history trigger (a report batch)", False,
                          "SELECT id, 'sent', now(), device_id, NULL FROM messages"
                          " WHERE id = ANY($1::uuid[])", delivered[:500])
    return seen


@dataclass(repr=False)
class Found:
    statements: list[Statement]
    indexes: dict[str, str]  # every index on TABLES: its definition


_FOUND: list[Found] = []


@pytest.fixture
async def found(db: asyncpg.Connection) -> Found:
    """The plans, computed once for the module on the database `db` emptied:
    they are values, and the fill is most of the module's time."""
    if not _FOUND:
        seen = await statements(db, await fill(db))
        definitions = await db.fetch(
            "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def"
            " FROM pg_index WHERE indrelid = ANY($1::regclass[])", list(TABLES))
        _FOUND.append(Found(seen, {r["name"]: r["def"] for r in definitions}))
    return _FOUND[0]


async def test_every_index_on_messages_and_their_history_is_read_by_a_statement(
        found: Found) -> None:
    read = set().union(*(st.indexes() for st in found.statements))
    unread = sorted(set(found.indexes) - read)
    assert not unread, (
        "no statement reads these indexes, yet every send writes them:\n"
        + "\n".join(found.indexes[name] for name in unread)
        + "\n\nwhat each statement reads:\n" + "\n".join(map(repr, found.statements)))


async def test_the_hot_lookups_read_an_index_never_a_seq_scan_of_the_table(found: Found) -> None:
    hot = [st for st in found.statements if st.hot]
    # The brief's hot lookups: the send's idempotency check, a report's row
    # lock, claim_queued, open_jobs, the sweeper, the list, GET by id. Each
    # reads its table, so the check below is not vacuous for them.
    named = {"idempotent_responses", "lock_for_reports", "move_reported", "claim_queued",
             "open_jobs",
             "fail_due (no report)", "fail_due (no report, listed)", "fail_due (expired)",
             "unacked_jobs", "list_messages (big account: recipient)", "get_message",
             "dispatched_jobs", "stray_jobs"}
    assert {st.call for st in hot} >= named
    assert all(st.scans(SCANNED_NEVER) for st in hot if st.call in named)
    scanning = [st for st in hot if "Seq Scan" in st.scans(SCANNED_NEVER)]
    assert not scanning, ("hot statements that scan the table:\n" + "\n".join(map(repr, scanning)))
