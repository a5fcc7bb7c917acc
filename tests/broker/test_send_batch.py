"""broker/delivery/batch.py and store.insert_messages: concurrent sends in
one statement and one commit, each row failing alone (issue 14)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest

from broker import keys, store
from broker.delivery import batch as batch_module
from broker.delivery.batch import SendBatch
from tests.conftest import new_account, new_device

UTC = dt.UTC


def row(account: store.Account, device: store.DeviceRow | None, *, body: str = "hi",
        status: str = "dispatching", key: store.KeyRow | None = None,
        quota: store.Quota | None = None,
        created_at: dt.datetime | None = None) -> store.NewMessage:
    return store.NewMessage(uuid.uuid4(), account.id, device.id if device else None,
                            "+16502530000", body, status, None,
                            created_at or dt.datetime.now(UTC),
                            key.id if key else None, key.prefix if key else None, quota)


async def a_key(db: asyncpg.Connection, account: store.Account) -> store.KeyRow:
    full, prefix = keys.make_secret(keys.KEY_KIND)
    return await store.insert_key(db, account.id, "k", prefix, keys.digest(b"s", full),
                                  ["messages:send"], None, None)


async def history(db: asyncpg.Connection, mid: uuid.UUID) -> list[str]:
    return [r["status"] for r in await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1"
        " ORDER BY status = 'queued' DESC", mid)]


async def test_concurrent_sends_share_statements_and_each_is_written_with_its_history(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    k = await a_key(db, acc)
    batch = SendBatch(pool)
    rows = [row(acc, dev, body=f"m{i}", key=k, status="queued" if i % 3 == 0 else "dispatching")
            for i in range(60)]
    got = await asyncio.gather(*(batch.insert(r) for r in rows))
    assert got == [store.Inserted.WRITTEN] * 60
    assert batch.statements < 10  # 60 sends of one loop turn: a statement or a few
    for r in rows:
        stored = await db.fetchrow("SELECT status, body, device_id FROM messages WHERE id = $1",
                                   r.id)
        assert (stored["status"], stored["body"], stored["device_id"]) == (r.status, r.body, dev.id)
        assert await history(db, r.id) == (["queued"] if r.status == "queued"
                                           else ["queued", "dispatching"])


async def test_a_burst_goes_in_small_statements_written_at_the_same_time(
        db: asyncpg.Connection, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst is cut into statements of at most 32 rows, several of them
    in flight together: one big statement kept every request of its rows
    (and the loop) waiting for the whole of it (batch.py: 4 x 256 before)."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    sizes: list[int] = []
    in_flight, most = 0, 0
    insert_messages = store.insert_messages

    async def counted(conn: store.Db, rows: list[store.NewMessage]) -> list[store.Inserted | None]:
        nonlocal in_flight, most
        sizes.append(len(rows))
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await insert_messages(conn, rows)
        finally:
            in_flight -= 1

    monkeypatch.setattr(store, "insert_messages", counted)
    burst = 200
    pool = await store.create_pool(database_url, min_size=8, max_size=8)  # the broker's has 20
    try:
        batch = SendBatch(pool)
        got = await asyncio.gather(*(batch.insert(row(acc, dev, body=f"m{i}"))
                                     for i in range(burst)))
    finally:
        await pool.close()
    assert got == [store.Inserted.WRITTEN] * burst
    assert max(sizes) <= 32 and batch_module.MAX_ROWS <= 32
    assert sum(sizes) == burst
    assert most >= 4  # several statements at the same time, not one after another
    assert await db.fetchval("SELECT count(*) FROM messages WHERE device_id = $1", dev.id) == burst


async def test_a_revoked_key_or_a_deactivated_device_fails_only_its_own_row(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev, gone = await new_device(db, acc), await new_device(db, acc, "gone")
    k, revoked = await a_key(db, acc), await a_key(db, acc)
    await db.execute("UPDATE api_keys SET revoked = true WHERE id = $1", revoked.id)
    await db.execute("UPDATE devices SET active = false WHERE id = $1", gone.id)
    rows = [row(acc, dev, key=k), row(acc, dev, key=revoked), row(acc, gone, key=k),
            row(acc, None, key=k, status="queued")]
    batch = SendBatch(pool)
    got = await asyncio.gather(*(batch.insert(r) for r in rows))
    assert got == [store.Inserted.WRITTEN, store.Inserted.KEY_GONE, store.Inserted.DEVICE_GONE,
                   store.Inserted.WRITTEN]
    written = {r["id"] for r in await db.fetch("SELECT id FROM messages")}
    assert written == {rows[0].id, rows[3].id}
    assert await db.fetchval("SELECT count(*) FROM message_history WHERE message_id = ANY($1)",
                             [rows[1].id, rows[2].id]) == 0


async def test_a_row_postgresql_refuses_fails_alone(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    batch = SendBatch(pool)
    good = [row(acc, dev, body=f"ok {i}") for i in range(5)]
    bad = row(acc, dev, body="a NUL \x00 byte")  # text cannot hold it
    results = await asyncio.gather(*(batch.insert(r) for r in [*good[:2], bad, *good[2:]]),
                                   return_exceptions=True)
    assert isinstance(results[2], asyncpg.PostgresError), results
    assert [r for i, r in enumerate(results) if i != 2] == [store.Inserted.WRITTEN] * 5
    assert {r["id"] for r in await db.fetch("SELECT id FROM messages")} == {r.id for r in good}


async def test_the_months_quota_is_taken_from_one_stripe_and_never_overshot(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    """A limit of 10 (ten stripes of one unit) and 25 sends in one batch:
    the batch takes what its one stripe holds (one stripe an account, so
    that two batches never wait for each other in a cycle); the others,
    each alone through the one-row statement, take the other 9 units, and
    the rest are over quota; `used` adds up."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    k = await a_key(db, acc)
    month = dt.date(2031, 5, 1)
    at = dt.datetime(2031, 5, 2, tzinfo=UTC)
    await store.open_month(db, acc.id, month, 10)
    quota = store.Quota(month, 10)
    rows = [row(acc, dev, key=k, quota=quota, created_at=at) for _ in range(25)]
    batch = SendBatch(pool)
    got = await asyncio.gather(*(batch.insert(r) for r in rows))
    assert batch.statements == 1
    assert got.count(store.Inserted.WRITTEN) == 1 and got.count(None) == 24
    alone = []
    for r, outcome in zip(rows, got, strict=True):
        if outcome is None:
            for _ in range(2 * store.STRIPES + 4):
                again = await store.insert_row(db, r)
                if again is not store.Inserted.CONTENDED:
                    break
            alone.append(again)
    assert alone.count(store.Inserted.WRITTEN) == 9
    assert alone.count(store.Inserted.OVER_QUOTA) == 15
    assert await db.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", acc.id) == 10
    assert await db.fetchval("SELECT sum(used) FROM account_usage WHERE account_id = $1"
                             " AND month = $2", acc.id, month) == 10


async def test_a_month_not_opened_yet_sends_the_row_alone(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    r = row(acc, dev, quota=store.Quota(dt.date(2032, 1, 1), 100),
            created_at=dt.datetime(2032, 1, 5, tzinfo=UTC))
    assert await SendBatch(pool).insert(r) is None
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize("first", ["batch", "alone"])
async def test_batches_and_single_sends_of_one_account_never_overshoot_together(
        db: asyncpg.Connection, pool: store.Pool, first: str) -> None:
    """Batched rows and one-row sends race for the last units of a month:
    the total written is exactly the limit."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    month = dt.date(2033, 2, 1)
    at = dt.datetime(2033, 2, 3, tzinfo=UTC)
    await store.open_month(db, acc.id, month, 40)
    quota = store.Quota(month, 40)
    batch = SendBatch(pool)

    async def alone(r: store.NewMessage | None = None) -> store.Inserted:
        r = r or row(acc, dev, quota=quota, created_at=at)
        for _ in range(2 * store.STRIPES + 4):
            got = await store.insert_row(pool, r)
            if got is not store.Inserted.CONTENDED:
                return got
        raise AssertionError("contended for ever")

    async def batched() -> store.Inserted:
        r = row(acc, dev, quota=quota, created_at=at)
        got = await batch.insert(r)
        return got if got is not None else await alone(r)  # as the send path does

    batched_sends = [batched() for _ in range(40)]
    singles = [alone() for _ in range(20)]
    await asyncio.gather(*(batched_sends + singles if first == "batch"
                           else singles + batched_sends))
    assert await db.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", acc.id) == 40
    assert await db.fetchval("SELECT sum(used) FROM account_usage WHERE account_id = $1",
                             acc.id) == 40


async def test_a_send_given_up_before_its_batch_left_is_never_written(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    """A request past its deadline is cancelled: if its row is still
    waiting, it is taken out; once the batch is in PostgreSQL it is written
    all the same (and its outcome still comes on the future)."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    batch = SendBatch(pool)
    early, late = row(acc, dev, body="early"), row(acc, dev, body="late")
    gave_up = batch.submit(early)
    assert batch.withdraw(gave_up) is True  # same loop turn: the batch has not left
    assert gave_up.cancelled()
    future = batch.submit(late)
    for _ in range(3):
        await asyncio.sleep(0)  # the batch is in flight now
    assert batch.withdraw(future) is False
    assert await future is store.Inserted.WRITTEN
    assert {r["body"] for r in await db.fetch("SELECT body FROM messages")} == {"late"}
    assert batch.statements == 0  # one row: the one-row statement, cheaper for it


async def test_a_caller_gets_its_outcome_before_the_writer_gives_its_connection_back(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    """The outcome is handed over as soon as the statement answers; the
    connection goes back to the pool after (asyncpg's release costs the
    event loop a task and a shield: loop turns a request would wait for)."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    batch = SendBatch(pool)
    in_use: list[int] = []

    async def send() -> store.Inserted | None:
        outcome = await batch.insert(row(acc, dev))
        in_use.append(pool.get_size() - pool.get_idle_size())  # as the caller wakes
        return outcome

    for rows in (1, 2, 8):  # the one-row statement, two at once, the batch statement
        in_use.clear()
        assert await asyncio.gather(*(send() for _ in range(rows))) == [
            store.Inserted.WRITTEN] * rows
        assert min(in_use) >= 1  # the writer's connection, still held
        for _ in range(20):
            await asyncio.sleep(0)
        assert pool.get_size() - pool.get_idle_size() == 0  # then given back


async def test_a_caller_cancelled_while_its_row_is_in_flight_hands_the_outcome_on(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    """A request that gives up (its deadline) once its row is in
    PostgreSQL: the row is written all the same, and `orphaned` gets its
    outcome, so that its job still goes to the phone."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    batch = SendBatch(pool)
    handed: list[store.Inserted | None] = []
    r = row(acc, dev, body="given up")
    caller = asyncio.get_running_loop().create_task(batch.insert(r, handed.append))
    for _ in range(3):
        await asyncio.sleep(0)  # the row is in flight
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(200):
        if handed:
            break
        await asyncio.sleep(0.01)
    assert handed == [store.Inserted.WRITTEN]
    assert await db.fetchval("SELECT body FROM messages WHERE id = $1", r.id) == "given up"
