"""broker/store/ (every table module) against the real PostgreSQL of the test session.

`db` (tests/conftest.py) empties the database; the store is called through
`conn`, a connection set up exactly as the broker's pool sets up its own
(store.connect: the jsonb codec). `db` is used for raw checks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from broker import keys, store
from broker.store import usage
from tests.conftest import later_id_first, new_account, new_device, rows_held, stored

pytestmark = pytest.mark.timeout(30)

SECRET = b"store-test-secret"
UTC = dt.UTC


@pytest.fixture
async def conn(db: asyncpg.Connection, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await store.connect(database_url)
    try:
        yield c
    finally:
        await c.close()


async def account(conn: asyncpg.Connection, email: str | None = None,
                  plan: str = "default") -> store.Account:
    return await store.create_account(conn, email or f"{uuid.uuid4().hex[:8]}@example.com",
                                      plan, None)


async def device(conn: asyncpg.Connection, acc: store.Account, name: str = "phone",
                 send_rate: int = 30) -> store.DeviceRow:
    full, prefix = keys.make_secret(keys.TOKEN_KIND)
    return await store.insert_device(conn, acc.id, name, prefix, keys.digest(SECRET, full),
                                     send_rate)


async def key(conn: asyncpg.Connection, acc: store.Account, name: str = "k",
              scopes: list[str] | None = None, rate_limit: int | None = None,
              expires_at: dt.datetime | None = None) -> tuple[str, store.KeyRow]:
    full, prefix = keys.make_secret(keys.KEY_KIND)
    row = await store.insert_key(conn, acc.id, name, prefix, keys.digest(SECRET, full),
                                 scopes or ["messages:send"], rate_limit, expires_at)
    return full, row


async def message(conn: asyncpg.Connection, acc: store.Account, dev: store.DeviceRow,
                  status: str = "dispatching", created_at: dt.datetime | None = None,
                  body: str = "hello") -> uuid.UUID:
    mid = uuid.uuid4()
    await store.insert_message(conn, mid, acc.id, dev.id, "+16502530000", body, status, None,
                               created_at or dt.datetime.now(UTC))
    return mid


async def history(db: asyncpg.Connection, mid: uuid.UUID) -> list[tuple[str, dt.datetime]]:
    """The raw history rows, by time, then in lifecycle order."""
    rows = await db.fetch(
        "SELECT status, at FROM message_history WHERE message_id = $1 ORDER BY at, array_position("
        "ARRAY['queued','dispatching','sending','sent','delivered','failed'], status)", mid)
    return [(r["status"], r["at"]) for r in rows]


async def add_plan(db: asyncpg.Connection, name: str, monthly: int, max_devices: int) -> None:
    await db.execute("INSERT INTO plans (name, monthly_messages, max_devices) VALUES ($1, $2, $3)",
                     name, monthly, max_devices)


# --- accounts ---------------------------------------------------------------


async def test_create_account(conn: asyncpg.Connection) -> None:
    acc = await store.create_account(conn, "a@example.com", "default", "$argon2id$x")
    assert acc.email == "a@example.com"
    assert acc.plan == "default"
    assert acc.monthly_messages == 1_000_000 and acc.max_devices == 1000
    assert await store.account_by_email(conn, "a@example.com") == acc
    assert await store.account_by_id(conn, acc.id) == acc
    assert await store.account_by_email(conn, "nobody@example.com") is None
    assert await store.account_by_id(conn, uuid.uuid4()) is None


async def test_create_account_duplicate_email(conn: asyncpg.Connection,
                                              db: asyncpg.Connection) -> None:
    await store.create_account(conn, "a@example.com", "default", None)
    with pytest.raises(store.DuplicateEmail):
        await store.create_account(conn, "a@example.com", "default", None)
    assert await db.fetchval("SELECT count(*) FROM accounts") == 1


async def test_create_account_unknown_plan(conn: asyncpg.Connection,
                                           db: asyncpg.Connection) -> None:
    with pytest.raises(LookupError, match="gold"):
        await store.create_account(conn, "a@example.com", "gold", None)
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_create_account_with_a_plan(conn: asyncpg.Connection,
                                          db: asyncpg.Connection) -> None:
    await add_plan(db, "small", 123, 2)
    acc = await store.create_account(conn, "a@example.com", "small", None)
    assert (acc.plan, acc.monthly_messages, acc.max_devices) == ("small", 123, 2)


# --- API keys ---------------------------------------------------------------


async def test_insert_key_and_key_by_prefix(conn: asyncpg.Connection,
                                            db: asyncpg.Connection) -> None:
    await add_plan(db, "small", 123, 2)
    acc = await account(conn, plan="small")
    expires = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    full, row = await key(conn, acc, "ci", ["messages:send", "messages:read"], 10, expires)
    assert row.account_id == acc.id
    assert (row.name, row.scopes, row.rate_limit, row.expires_at, row.revoked) == (
        "ci", ["messages:send", "messages:read"], 10, expires, False)
    assert keys.matches(SECRET, full, row.secret_hash)

    found = await store.key_by_prefix(conn, row.prefix)
    assert found is not None
    assert found.id == row.id and found.secret_hash == row.secret_hash
    assert found.monthly_messages == 123  # the plan, joined in the same query
    assert await store.key_by_prefix(conn, "00000000") is None


async def test_stored_key_holds_only_a_hash(conn: asyncpg.Connection,
                                            db: asyncpg.Connection) -> None:
    acc = await account(conn)
    full, row = await key(conn, acc)
    secret_part = full.split("_", 2)[2]
    dump = await db.fetchval("SELECT row_to_json(k)::text FROM api_keys k WHERE id = $1", row.id)
    assert secret_part not in dump and full not in dump


async def test_list_keys_scoped_by_account(conn: asyncpg.Connection) -> None:
    a, b = await account(conn), await account(conn)
    _, k1 = await key(conn, a, "one")
    _, k2 = await key(conn, a, "two")
    _, k3 = await key(conn, b, "three")
    assert [k.id for k in await store.list_keys(conn, a.id)] == [k1.id, k2.id]
    assert [k.id for k in await store.list_keys(conn, b.id)] == [k3.id]
    assert await store.list_keys(conn, uuid.uuid4()) == []


async def test_revoke_key_scoped_by_account(conn: asyncpg.Connection) -> None:
    a, b = await account(conn), await account(conn)
    _, k = await key(conn, a)
    assert await store.revoke_key(conn, k.id, b.id) is False
    found = await store.key_by_prefix(conn, k.prefix)
    assert found is not None and found.revoked is False
    assert await store.revoke_key(conn, k.id, a.id) is True
    found = await store.key_by_prefix(conn, k.prefix)
    assert found is not None and found.revoked is True
    assert await store.revoke_key(conn, uuid.uuid4(), a.id) is False


async def test_revoke_key_by_operator(conn: asyncpg.Connection) -> None:
    a = await account(conn)
    _, k = await key(conn, a)
    assert await store.revoke_key(conn, k.id) is True
    found = await store.key_by_prefix(conn, k.prefix)
    assert found is not None and found.revoked is True
    assert await store.revoke_key(conn, uuid.uuid4()) is False


async def test_rotate_key_scoped_by_account(conn: asyncpg.Connection) -> None:
    a, b = await account(conn), await account(conn)
    expires = dt.datetime(2031, 1, 1, tzinfo=UTC)
    old_full, k = await key(conn, a, "ci", ["messages:read"], 7, expires)
    new_full, new_prefix = keys.make_secret(keys.KEY_KIND)
    new_hash = keys.digest(SECRET, new_full)

    assert await store.rotate_key(conn, k.id, new_prefix, new_hash, b.id) is None
    assert await store.key_by_prefix(conn, k.prefix) is not None  # untouched
    assert await store.key_by_prefix(conn, new_prefix) is None

    rotated = await store.rotate_key(conn, k.id, new_prefix, new_hash, a.id)
    assert rotated is not None
    assert (rotated.id, rotated.account_id, rotated.name, rotated.scopes, rotated.rate_limit,
            rotated.expires_at) == (k.id, a.id, "ci", ["messages:read"], 7, expires)
    assert (rotated.prefix, rotated.secret_hash) == (new_prefix, new_hash)
    # The old secret stops at once: its prefix finds nothing.
    assert await store.key_by_prefix(conn, k.prefix) is None
    found = await store.key_by_prefix(conn, new_prefix)
    assert found is not None and keys.matches(SECRET, new_full, found.secret_hash)
    assert not keys.matches(SECRET, old_full, found.secret_hash)
    assert await store.rotate_key(conn, uuid.uuid4(), "12345678", new_hash, a.id) is None


# --- devices ----------------------------------------------------------------


async def test_insert_device(conn: asyncpg.Connection) -> None:
    acc = await account(conn)
    full, prefix = keys.make_secret(keys.TOKEN_KIND)
    dev = await store.insert_device(conn, acc.id, "My Samsung S24", prefix,
                                    keys.digest(SECRET, full), 12)
    assert (dev.account_id, dev.name, dev.send_rate, dev.active) == (
        acc.id, "My Samsung S24", 12, True)
    assert dev.last_seen_at is None and dev.health is None and dev.app_version is None
    assert (await store.devices_by_token_prefix(conn, [prefix])).get(prefix) == dev
    assert (await store.devices_by_token_prefix(conn, ["00000000"])).get("00000000") is None
    full2, prefix2 = keys.make_secret(keys.TOKEN_KIND)
    dev2 = await store.insert_device(conn, acc.id, "second", prefix2, keys.digest(SECRET, full2),
                                     30)
    assert await store.devices_by_token_prefix(conn, [prefix, "00000000", prefix2]) == {
        prefix: dev, prefix2: dev2}
    assert await store.list_devices(conn, acc.id) == [dev, dev2]
    assert await store.list_devices(conn, (await account(conn)).id) == []


async def test_device_limit_reached(conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    await add_plan(db, "one-phone", 100, 1)
    acc = await account(conn, plan="one-phone")
    first = await device(conn, acc, "first")
    with pytest.raises(store.DeviceLimitReached):
        await device(conn, acc, "second")
    assert await db.fetchval("SELECT count(*) FROM devices") == 1
    # Another account on the same plan has its own limit.
    other = await account(conn, plan="one-phone")
    await device(conn, other)
    # Only active devices count.
    assert await store.deactivate_device(conn, first.id, acc.id) is True
    await device(conn, acc, "replacement")


async def test_device_limit_holds_under_concurrent_registrations(
        database_url: str, conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    await add_plan(db, "one-phone", 100, 1)
    acc = await account(conn, plan="one-phone")
    others = [await store.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(device(c, acc, f"p{i}") for i, c in enumerate(others)),
                                       return_exceptions=True)
    finally:
        for c in others:
            await c.close()
    assert sum(isinstance(r, store.DeviceRow) for r in results) == 1
    assert sum(isinstance(r, store.DeviceLimitReached) for r in results) == 3
    assert await db.fetchval("SELECT count(*) FROM devices") == 1


async def test_deactivate_device_scoped_by_account(conn: asyncpg.Connection) -> None:
    a, b = await account(conn), await account(conn)
    dev = await device(conn, a)
    assert await store.deactivate_device(conn, dev.id, b.id) is False
    assert (await store.list_devices(conn, a.id))[0].active is True
    assert await store.deactivate_device(conn, dev.id) is True
    assert (await store.list_devices(conn, a.id))[0].active is False


async def test_flush_last_seen_many_devices_in_one_call(conn: asyncpg.Connection) -> None:
    acc = await account(conn)
    d1, d2, d3 = [await device(conn, acc, name) for name in ("1", "2", "3")]
    t1 = dt.datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
    t2 = dt.datetime(2030, 5, 1, 12, 0, 5, tzinfo=UTC)
    await store.flush_last_seen(conn, [d1.id, d2.id], [t1, t2],
                                ['{"battery":80,"charging":true}', None], ["1.0", None])
    by_id = {d.id: d for d in await store.list_devices(conn, acc.id)}
    assert by_id[d1.id].last_seen_at == t1
    assert by_id[d1.id].health == {"battery": 80, "charging": True}
    assert by_id[d1.id].app_version == "1.0"
    assert by_id[d2.id].last_seen_at == t2
    assert by_id[d2.id].health is None and by_id[d2.id].app_version is None
    assert by_id[d3.id].last_seen_at is None  # not in the batch

    # An older batch arriving late never moves last_seen backwards; absent
    # health / version keep the stored ones.
    earlier = t1 - dt.timedelta(minutes=1)
    later = t2 + dt.timedelta(seconds=1)
    await store.flush_last_seen(conn, [d1.id, d2.id], [earlier, later],
                                [None, '{"signal":2}'], [None, "2.0"])
    by_id = {d.id: d for d in await store.list_devices(conn, acc.id)}
    assert by_id[d1.id].last_seen_at == t1
    assert by_id[d1.id].health == {"battery": 80, "charging": True}
    assert by_id[d1.id].app_version == "1.0"
    assert by_id[d2.id].last_seen_at == later
    assert by_id[d2.id].health == {"signal": 2}
    assert by_id[d2.id].app_version == "2.0"


async def test_flush_last_seen_empty_batch(conn: asyncpg.Connection) -> None:
    await store.flush_last_seen(conn, [], [], [], [])


# --- messages ---------------------------------------------------------------


async def test_insert_message_dispatching(conn: asyncpg.Connection,
                                          db: asyncpg.Connection) -> None:
    acc = await account(conn)
    dev = await device(conn, acc)
    at = dt.datetime(2030, 1, 1, 9, 30, 0, 123000, tzinfo=UTC)
    mid = uuid.uuid4()
    expires = at + dt.timedelta(minutes=5)
    await store.insert_message(conn, mid, acc.id, dev.id, "+212600000000", "Your code is 4829",
                               "dispatching", expires, at)
    row = await db.fetchrow("SELECT * FROM messages WHERE id = $1", mid)
    assert (row["account_id"], row["device_id"], row["recipient"], row["body"], row["status"],
            row["expires_at"], row["created_at"]) == (
        acc.id, dev.id, "+212600000000", "Your code is 4829", "dispatching", expires, at)
    assert await history(db, mid) == [("queued", at), ("dispatching", at)]


async def test_insert_message_queued(conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    acc = await account(conn)
    dev = await device(conn, acc)
    at = dt.datetime(2030, 1, 1, tzinfo=UTC)
    mid = await message(conn, acc, dev, "queued", at)
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", mid) == "queued"
    assert await history(db, mid) == [("queued", at)]


async def test_insert_message_checks_key_and_device_in_the_same_statement(
        conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    """What presence and the key cache may not have heard of yet: nothing is
    written for a key revoked or a device deactivated a moment ago."""
    acc = await account(conn)
    dev = await device(conn, acc)
    _, k = await key(conn, acc)
    now = dt.datetime.now(UTC)

    async def insert(key_prefix: str | None = k.prefix) -> tuple[store.Inserted, int]:
        mid = uuid.uuid4()
        got = await store.insert_message(conn, mid, acc.id, dev.id, "+16502530000", "x",
                                         "dispatching", None, now, k.id, key_prefix)
        return got, await db.fetchval("SELECT count(*) FROM messages WHERE id = $1", mid)

    assert await insert() == (store.Inserted.WRITTEN, 1)
    assert await insert(key_prefix="00000000") == (store.Inserted.KEY_GONE, 0)  # rotated
    await store.revoke_key(conn, k.id)
    assert await insert() == (store.Inserted.KEY_GONE, 0)
    await db.execute("UPDATE api_keys SET revoked = false WHERE id = $1", k.id)
    await store.deactivate_device(conn, dev.id)
    assert await insert() == (store.Inserted.DEVICE_GONE, 0)


async def test_get_message_history_oldest_first(conn: asyncpg.Connection,
                                                db: asyncpg.Connection) -> None:
    acc = await account(conn)
    dev = await device(conn, acc, "My Samsung S24")
    t0 = dt.datetime(2030, 1, 1, tzinfo=UTC)
    mid = await message(conn, acc, dev, "dispatching", t0)
    # Inserted out of time order: the answer must follow `at`, not insertion.
    for status, secs in (("delivered", 3), ("sent", 2), ("sending", 1)):
        await db.execute("INSERT INTO message_history (message_id, status, at) VALUES ($1, $2, $3)",
                         mid, status, t0 + dt.timedelta(seconds=secs))
    await db.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", mid)

    found = await store.get_message(conn, acc.id, mid)
    assert found is not None
    row, hist = found
    assert (row.id, row.status, row.device_id, row.device_name, row.body, row.created_at) == (
        mid, "delivered", dev.id, "My Samsung S24", "hello", t0)
    assert [(h.status, h.at) for h in hist] == [
        ("queued", t0), ("dispatching", t0), ("sending", t0 + dt.timedelta(seconds=1)),
        ("sent", t0 + dt.timedelta(seconds=2)), ("delivered", t0 + dt.timedelta(seconds=3))]


async def test_get_message_of_another_account_is_none(conn: asyncpg.Connection) -> None:
    a, b = await account(conn), await account(conn)
    mid = await message(conn, a, await device(conn, a))
    assert await store.get_message(conn, b.id, mid) is None
    assert await store.get_message(conn, a.id, uuid.uuid4()) is None
    assert await store.get_message(conn, a.id, mid) is not None


async def test_list_messages_keyset(conn: asyncpg.Connection) -> None:
    a, b = await account(conn), await account(conn)
    dev = await device(conn, a)
    ids = []
    for i, status in enumerate(["queued", "dispatching", "queued", "dispatching", "queued"]):
        ids.append(await message(conn, a, dev, status, body=f"m{i}"))
    await message(conn, b, await device(conn, b))  # never seen by a

    newest_first = list(reversed(ids))
    page1 = await store.list_messages(conn, a.id, None, 2, None)
    assert [m.id for m in page1] == newest_first[:2]
    page2 = await store.list_messages(conn, a.id, None, 2, page1[-1].seq)
    assert [m.id for m in page2] == newest_first[2:4]
    page3 = await store.list_messages(conn, a.id, None, 2, page2[-1].seq)
    assert [m.id for m in page3] == newest_first[4:]
    assert await store.list_messages(conn, a.id, None, 2, page3[-1].seq) == []

    queued = await store.list_messages(conn, a.id, "queued", 10, None)
    assert [m.id for m in queued] == [ids[4], ids[2], ids[0]]
    queued2 = await store.list_messages(conn, a.id, "queued", 1, queued[0].seq)
    assert [m.id for m in queued2] == [ids[2]]
    assert await store.list_messages(conn, a.id, "delivered", 10, None) == []
    assert all(m.device_name == "phone" for m in page1)


async def test_a_send_takes_its_quota_unit_in_the_insert(conn: asyncpg.Connection,
                                                          db: asyncpg.Connection) -> None:
    """The month's usage (migrations 0004, 0005): opened with the messages
    the month already holds, taken from in the INSERT while under the limit,
    never by a message that is not written."""
    acc = await account(conn)
    dev = await device(conn, acc)
    march = dt.date(2030, 3, 1)
    start = dt.datetime(2030, 3, 1, tzinfo=UTC)
    await message(conn, acc, dev, created_at=start - dt.timedelta(seconds=1))  # February
    await message(conn, acc, dev, created_at=start)  # before the month's rows: counted
    _, k = await key(conn, acc)

    async def send(limit: int = 3, key_prefix: str = k.prefix) -> store.Inserted:
        return await store.insert_message(conn, uuid.uuid4(), acc.id, dev.id, "+16502530000",
                                          "x", "dispatching", None, start + dt.timedelta(days=3),
                                          k.id, key_prefix, store.Quota(march, limit))

    async def written_in_march() -> int:
        return int(await db.fetchval("SELECT count(*) FROM messages WHERE created_at >= $1",
                                     start))

    assert await send() is store.Inserted.MONTH_UNOPENED
    assert await written_in_march() == 1
    await store.open_month(conn, acc.id, march, 3)
    await store.open_month(conn, acc.id, march, 3)  # a second opener leaves the rows alone
    assert await store.used_in(conn, acc.id, march) == 1
    assert await db.fetchval("SELECT count(*) FROM account_usage") == store.STRIPES
    assert await db.fetchval("SELECT sum(cap) FROM account_usage") == 3
    assert await send(key_prefix="00000000") is store.Inserted.KEY_GONE  # nothing taken
    await store.deactivate_device(conn, dev.id)
    assert await send() is store.Inserted.DEVICE_GONE
    await db.execute("UPDATE devices SET active = true WHERE id = $1", dev.id)
    assert await store.used_in(conn, acc.id, march) == 1
    assert [await send(), await send()] == [store.Inserted.WRITTEN] * 2
    assert await send() is store.Inserted.OVER_QUOTA
    assert (await store.used_in(conn, acc.id, march), await written_in_march()) == (3, 3)
    assert await store.used_in(conn, acc.id, dt.date(2030, 2, 1)) is None


async def test_a_plan_change_cuts_the_caps_again_and_the_month_stays_exact(
        conn: asyncpg.Connection) -> None:
    acc = await account(conn)
    dev = await device(conn, acc)
    march = dt.date(2030, 3, 1)
    at = dt.datetime(2030, 3, 2, tzinfo=UTC)

    async def send(limit: int) -> store.Inserted:
        for _ in range(3):
            got = await store.insert_message(conn, uuid.uuid4(), acc.id, dev.id,
                                             "+16502530000", "x", "dispatching", None, at,
                                             quota=store.Quota(march, limit))
            if got is store.Inserted.MONTH_UNOPENED:
                await store.open_month(conn, acc.id, march, limit)
            elif got is store.Inserted.PLAN_CHANGED:
                await store.resize_month(conn, acc.id, march, limit)
            else:
                return got
        raise AssertionError("no answer in three tries")

    async def sends(limit: int, n: int) -> list[store.Inserted]:
        return [await send(limit) for _ in range(n)]

    W, OVER = store.Inserted.WRITTEN, store.Inserted.OVER_QUOTA
    assert await sends(20, 21) == [W] * 20 + [OVER]
    assert await sends(25, 6) == [W] * 5 + [OVER]  # raised: 5 more
    assert await sends(22, 2) == [OVER] * 2  # lowered below what is used: none
    assert await store.used_in(conn, acc.id, march) == 25
    assert await sends(40, 16) == [W] * 15 + [OVER]


async def test_opening_a_month_counts_only_when_its_rows_are_missing(
        conn: asyncpg.Connection) -> None:
    """The count of the month's messages is the expensive part: with the rows
    there (a second process's first send of the month), it must not run."""
    acc = await account(conn)
    march = dt.date(2030, 3, 1)
    await store.open_month(conn, acc.id, march, 100)
    plan = await conn.fetchval(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF, FORMAT JSON) " + usage.OPEN_MONTH,
        acc.id, march, *usage.month_bounds(march), 100)

    def scans(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node] if node.get("Relation Name") == "messages" else []
        for child in node.get("Plans", []):
            found += scans(child)
        return found

    (count_scan,) = scans(json.loads(plan)[0]["Plan"])
    assert count_scan["Actual Loops"] == 0  # planned, never run


async def test_open_jobs(conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    acc = await account(conn)
    dev, other = await device(conn, acc), await device(conn, acc)
    m1 = await message(conn, acc, dev, "dispatching", body="one")
    m2 = await message(conn, acc, dev, "dispatching", body="two")
    m3 = await message(conn, acc, dev, "dispatching", body="three")
    await message(conn, acc, other, "dispatching")
    await db.execute("UPDATE messages SET status = 'sending' WHERE id = $1", m2)
    await db.execute("UPDATE messages SET status = 'delivered' WHERE id = $1", m3)
    idle = await device(conn, acc)  # no open job
    gone = await device(conn, acc)
    await db.execute("UPDATE devices SET active = false WHERE id = $1", gone.id)
    missing = uuid.uuid4()
    found = await store.open_jobs(conn, [dev.id, idle.id, gone.id, missing],
                                  ["dispatching", "sending"])
    assert set(found) == {dev.id, idle.id, gone.id}  # a device that does not exist: left out
    assert found[dev.id].active and found[idle.id].active and not found[gone.id].active
    assert [(j.id, j.body, j.status) for j in found[dev.id].jobs] == [
        (m1, "one", "dispatching"), (m2, "two", "sending")]
    assert found[idle.id].jobs == [] and found[gone.id].jobs == []
    only_sending = await store.open_jobs(conn, [dev.id], ["sending"])
    assert [j.id for j in only_sending[dev.id].jobs] == [m2]


async def test_claim_queued(conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    acc, other_acc = await account(conn), await account(conn)
    promised, taker = await device(conn, acc), await device(conn, acc)
    queued = [await message(conn, acc, promised, "queued", body=f"q{i}") for i in range(4)]
    not_queued = await message(conn, acc, promised, "dispatching")
    theirs = await message(conn, other_acc, await device(conn, other_acc), "queued")

    jobs = await store.claim_queued(conn, acc.id, taker.id, 3)
    assert [(j.id, j.status) for j in jobs] == [(m, "dispatching") for m in queued[:3]]
    assert [j.body for j in jobs] == ["q0", "q1", "q2"]
    for mid in queued[:3]:
        r = await db.fetchrow("SELECT status, device_id FROM messages WHERE id = $1", mid)
        assert (r["status"], r["device_id"]) == ("dispatching", taker.id)
        assert [s for s, _ in await history(db, mid)] == ["queued", "dispatching"]
        assert await db.fetchval(
            "SELECT device_id FROM message_history"
            " WHERE message_id = $1 AND status = 'dispatching'", mid) == taker.id
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", queued[3]) == "queued"
    assert await db.fetchval(
        "SELECT device_id FROM messages WHERE id = $1", not_queued) == promised.id
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", theirs) == "queued"

    assert [j.id for j in await store.claim_queued(conn, acc.id, taker.id, 10)] == [queued[3]]
    assert await store.claim_queued(conn, acc.id, taker.id, 10) == []


async def test_claim_queued_skips_rows_locked_elsewhere(database_url: str,
                                                        conn: asyncpg.Connection,
                                                        db: asyncpg.Connection) -> None:
    acc = await account(conn)
    dev = await device(conn, acc)
    m1, m2, m3 = [await message(conn, acc, dev, "queued") for _ in range(3)]
    async with rows_held(database_url, [m1]):
        # Without SKIP LOCKED this would block on m1 until the timeout.
        jobs = await asyncio.wait_for(store.claim_queued(conn, acc.id, dev.id, 10), 5)
        assert [j.id for j in jobs] == [m2, m3]
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", m1) == "queued"
    assert [j.id for j in await store.claim_queued(conn, acc.id, dev.id, 10)] == [m1]


# --- idempotency ------------------------------------------------------------


async def test_claim_idempotency(conn: asyncpg.Connection) -> None:
    acc, other = await account(conn), await account(conn)
    now = dt.datetime.now(UTC)
    day_ago = now - dt.timedelta(hours=24)
    m1, m2, m3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    assert await store.claim_idempotency(conn, acc.id, "k1", b"h1", m1, b"r1", day_ago) is True
    assert await store.claim_idempotency(conn, acc.id, "k1", b"h2", m2, b"r2", day_ago) is False
    assert await store.idempotent_responses(conn, [(acc.id, "k1"), (acc.id, "k2")], day_ago) == {
        (acc.id, "k1"): store.Idempotent(request_hash=b"h1", response=b"r1")}
    # Keys are per account.
    assert await store.claim_idempotency(conn, other.id, "k1", b"h9", m3, b"r9", day_ago) is True
    assert await store.idempotent_responses(conn, [(other.id, "k1")], day_ago) == {
        (other.id, "k1"): store.Idempotent(request_hash=b"h9", response=b"r9")}

    # Past the window (the row is older than `since`) the key is taken over.
    later = dt.datetime.now(UTC) + dt.timedelta(seconds=5)
    assert await store.idempotent_responses(conn, [(acc.id, "k1")], later) == {}
    assert await store.claim_idempotency(conn, acc.id, "k1", b"h3", m3, b"r3", later) is True
    assert await store.idempotent_responses(conn, [(acc.id, "k1")], day_ago) == {
        (acc.id, "k1"): store.Idempotent(request_hash=b"h3", response=b"r3")}
    # ... and is fresh again: a twin right after is refused.
    assert await store.claim_idempotency(conn, acc.id, "k1", b"h4", m2, b"r4", day_ago) is False


# --- reports ----------------------------------------------------------------


async def test_lock_for_reports(conn: asyncpg.Connection) -> None:
    """The rows a batch of reports names, each if the reporting phone holds
    it; unknown ids, and another phone's job, are absent (not yours)."""
    acc = await account(conn)
    mine = await device(conn, acc)
    other = await device(conn, acc, "other")
    mid = await message(conn, acc, mine)
    theirs = await message(conn, acc, other)
    assert await store.lock_for_reports(
        conn, [mid, uuid.uuid4(), theirs], [mine.id, mine.id, mine.id]) == [store.Held(
            id=mid, device_id=mine.id, status="dispatching", error=None)]


async def test_write_reports_moves_and_never_duplicates_history(
        conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    acc = await account(conn)
    dev = await device(conn, acc)
    mid = await message(conn, acc, dev)
    sending = store.Held(id=mid, device_id=dev.id, status="sending", error=None)
    await store.write_reports(conn, [sending], [(mid, "sending", dev.id, None)] * 2)
    await store.write_reports(conn, [], [(mid, "sending", dev.id, None)])  # a late report
    await store.write_reports(conn, [store.Held(id=mid, device_id=dev.id, status="failed",
                                                error="carrier said no")],
                              [(mid, "failed", dev.id, "carrier said no")])
    await store.write_reports(conn, [], [(mid, "failed", dev.id, None)])
    statuses = [s for s, _ in await history(db, mid)]
    assert sorted(statuses) == sorted(["queued", "dispatching", "sending", "failed"])
    r = await db.fetchrow("SELECT status, error FROM messages WHERE id = $1", mid)
    assert (r["status"], r["error"]) == ("failed", "carrier said no")
    assert await db.fetchval(
        "SELECT error FROM message_history WHERE message_id = $1 AND status = 'failed'",
        mid) == "carrier said no"
    assert await store.lock_for_reports(conn, [mid], [dev.id]) == [store.Held(
        id=mid, device_id=dev.id, status="failed", error="carrier said no")]


async def test_write_reports_records_a_late_report_without_moving_status(
        conn: asyncpg.Connection, db: asyncpg.Connection) -> None:
    """A late `sent` after `delivered` is in the history; the status stays."""
    acc = await account(conn)
    dev = await device(conn, acc)
    mid = await message(conn, acc, dev)
    await store.write_reports(conn, [store.Held(id=mid, device_id=dev.id, status="delivered",
                                                error=None)], [])
    await store.write_reports(conn, [], [(mid, "sent", dev.id, None)])
    await store.write_reports(conn, [], [(mid, "sent", dev.id, None)])
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", mid) == "delivered"
    assert await db.fetchval(
        "SELECT count(*) FROM message_history WHERE message_id = $1 AND status = 'sent'", mid) == 1


async def test_ping(conn: asyncpg.Connection) -> None:
    await store.ping(conn)


async def test_deactivating_a_device_locks_its_listed_jobs_in_id_order(
        db: asyncpg.Connection, database_url: str) -> None:
    """The phone's report batch and its listings lock its jobs in id order;
    the deactivation that fails its listed jobs must too, or it holds one
    while it waits for another a report batch holds (a deadlock, a second)."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    later, earlier = await later_id_first(db, acc, dev)
    await db.execute("UPDATE messages SET listed_at = now() WHERE id = ANY($1::uuid[])",
                     [later, earlier])
    admin = await store.connect(database_url)
    try:
        # As a report batch does, the earlier id first.
        async with rows_held(database_url, [earlier]) as holder:
            deactivating = asyncio.ensure_future(store.deactivate_device(admin, dev.id))
            await asyncio.sleep(0.3)
            assert not deactivating.done()  # waiting for the earlier job
            await holder.execute("SET LOCAL lock_timeout = '200ms'")
            await holder.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", later)
        assert await asyncio.wait_for(deactivating, 5)
    finally:
        await admin.close()
    for mid in (later, earlier):
        assert (await stored(db, mid)).status == "failed"
