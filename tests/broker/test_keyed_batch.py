"""Keyed sends in batches (broker/delivery/batch.py `keyed`, store.insert_keyed):
the Idempotency-Keys of one moment claimed in one transaction with their
messages, a key another request holds answered KEY_TAKEN, and a row that
is not written lets its key go; on the PostgreSQL of the test session."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest

from broker import store
from broker.delivery.batch import SendBatch
from tests.broker.test_send_batch import row
from tests.conftest import new_account, new_device

pytestmark = pytest.mark.timeout(30)
UTC = dt.UTC
SINCE = dt.timedelta(hours=24)


def keyed(account: store.Account, device: store.DeviceRow, key: str, **kw: object
          ) -> store.NewMessage:
    r = row(account, device, **kw)  # type: ignore[arg-type]
    return r._replace(claim=store.Claim(key, key.encode(), f"response to {key}".encode(),
                                        dt.datetime.now(UTC) - SINCE))


async def claims(db: asyncpg.Connection, account: store.Account) -> dict[str, tuple[uuid.UUID,
                                                                                    bytes]]:
    return {r["key"]: (r["message_id"], r["response"]) for r in await db.fetch(
        "SELECT key, message_id, response FROM idempotency_keys WHERE account_id = $1",
        account.id)}


async def messages(db: asyncpg.Connection) -> set[uuid.UUID]:
    return {r["id"] for r in await db.fetch("SELECT id FROM messages")}


async def test_keyed_sends_of_one_moment_share_one_transaction_with_their_keys(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    batch = SendBatch(pool, keyed=True)
    rows = [keyed(acc, dev, f"k{i}") for i in range(20)]
    got = await asyncio.gather(*(batch.insert(r) for r in rows))
    assert got == [store.Inserted.WRITTEN] * 20
    assert batch.statements == 1
    assert await messages(db) == {r.id for r in rows}
    assert await claims(db, acc) == {f"k{i}": (r.id, f"response to k{i}".encode())
                                     for i, r in enumerate(rows)}


@pytest.mark.parametrize("size", [2, 6])  # the one-row statements, and the batch statement
async def test_a_twin_in_the_batch_or_a_fresh_claim_elsewhere_takes_nothing(
        db: asyncpg.Connection, pool: store.Pool, size: int) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    other = uuid.uuid4()
    await db.execute("INSERT INTO idempotency_keys (account_id, key, request_hash, message_id,"
                     " response) VALUES ($1, 'held', '\\x00', $2, 'theirs')", acc.id, other)
    await db.execute("INSERT INTO idempotency_keys (account_id, key, request_hash, message_id,"
                     " response, created_at) VALUES ($1, 'stale', '\\x00', $2, 'old',"
                     " now() - interval '25 hours')", acc.id, uuid.uuid4())
    first, twin, held, stale = (keyed(acc, dev, "twin"), keyed(acc, dev, "twin"),
                                keyed(acc, dev, "held"), keyed(acc, dev, "stale"))
    more = [keyed(acc, dev, f"more{i}") for i in range(size - 2)]
    rows = [first, twin, held, stale, *more]
    assert await SendBatch(pool, keyed=True).insert(first) is store.Inserted.WRITTEN
    batch = SendBatch(pool, keyed=True)
    got = await asyncio.gather(*(batch.insert(r) for r in rows[1:]))
    # `first` alone before: its twin then finds the key taken, as `held` does.
    assert got[:3] == [store.Inserted.KEY_TAKEN, store.Inserted.KEY_TAKEN,
                       store.Inserted.WRITTEN]
    assert got[3:] == [store.Inserted.WRITTEN] * len(more)
    found = await claims(db, acc)
    assert found["twin"][0] == first.id and found["held"] == (other, b"theirs")
    assert found["stale"] == (stale.id, b"response to stale")  # over 24 h: taken over
    assert await messages(db) == {first.id, stale.id, *(r.id for r in more)}


async def test_twins_of_one_batch_write_one_message(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    rows = [keyed(acc, dev, "same") for _ in range(5)]
    batch = SendBatch(pool, keyed=True)
    got = await asyncio.gather(*(batch.insert(r) for r in rows))
    assert got == [store.Inserted.WRITTEN] + [store.Inserted.KEY_TAKEN] * 4
    assert await messages(db) == {rows[0].id}
    assert (await claims(db, acc))["same"][0] == rows[0].id


async def test_a_row_not_written_lets_its_key_go_and_the_others_are_written(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    """A month not opened yet (its unit needs the one-row path) and a
    deactivated device: nothing of them is kept, their keys free again."""
    acc = await new_account(db)
    dev, gone = await new_device(db, acc), await new_device(db, acc, "gone")
    await db.execute("UPDATE devices SET active = false WHERE id = $1", gone.id)
    unopened = keyed(acc, dev, "unopened", quota=store.Quota(dt.date(2033, 1, 1), 100))
    deactivated = keyed(acc, gone, "deactivated")
    fine = [keyed(acc, dev, f"fine{i}") for i in range(4)]
    batch = SendBatch(pool, keyed=True)
    got = await asyncio.gather(*(batch.insert(r) for r in [unopened, deactivated, *fine]))
    assert got == [None, store.Inserted.DEVICE_GONE] + [store.Inserted.WRITTEN] * 4
    assert set(await claims(db, acc)) == {f"fine{i}" for i in range(4)}
    assert await messages(db) == {r.id for r in fine}


async def test_a_key_held_by_a_stuck_transaction_makes_the_batch_give_way(
        db: asyncpg.Connection, pool: store.Pool, database_url: str) -> None:
    """Past KEY_WAIT the whole batch is rolled back and each row goes alone
    (None): one stuck key does not hold the others' sends."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute(
                "INSERT INTO idempotency_keys (account_id, key, request_hash, message_id,"
                " response) VALUES ($1, 'stuck', '\\x00', gen_random_uuid(), '')", acc.id)
            batch = SendBatch(pool, keyed=True)
            rows = [keyed(acc, dev, "stuck"), *(keyed(acc, dev, f"free{i}") for i in range(3))]
            got = await asyncio.wait_for(asyncio.gather(*(batch.insert(r) for r in rows)), 5)
            assert got == [None] * 4
            assert await messages(db) == set() and await claims(db, acc) == {}
    finally:
        await holder.close()
