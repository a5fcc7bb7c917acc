"""broker/delivery/reports.py's ReportWriter on a real PostgreSQL: phones'
reports group-committed, each caller handed its own result, as soon as
the commit answers; a database away fails the reports, never hangs them."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from broker import store
from broker.delivery.reports import Report, ReportWriter
from protocol import lifecycle
from tests.conftest import new_account, new_device, new_message, stored


async def test_reports_of_many_phones_share_a_commit_and_each_gets_its_own_result(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    phones = [await new_device(db, acc, f"p{i}") for i in range(3)]
    mids = [await new_message(db, acc, p, status="dispatching") for p in phones]
    written: list[int] = []
    writer = ReportWriter(pool, lambda reports: written.append(len(reports)))
    in_use: list[int] = []

    async def report(r: Report) -> lifecycle.Outcome:
        result = await writer.enqueue(r)
        in_use.append(pool.get_size() - pool.get_idle_size())  # as the caller wakes
        return result.outcome

    *moved, not_yours = await asyncio.gather(
        *(report(Report(p.id, m, "ack", None)) for p, m in zip(phones, mids, strict=True)),
        report(Report(phones[0].id, mids[1], "ack", None)))  # not its job
    assert [o.kind for o in moved] == [lifecycle.Kind.MOVE] * 3
    assert not_yours is lifecycle.NOT_YOURS
    assert written == [4]  # one batch, one commit
    # Handed over before the writer's connection went back to the pool
    # (asyncpg's release costs loop turns no report should wait for).
    assert min(in_use) >= 1
    for m in mids:
        assert (await stored(db, m)).status == lifecycle.SENDING
    await writer.close()


async def test_a_phones_reports_in_one_batch_apply_in_the_order_sent(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    phone = await new_device(db, acc)
    mid = await new_message(db, acc, phone, status="dispatching")
    writer = ReportWriter(pool)
    futures = [writer.enqueue(Report(phone.id, mid, r, None)) for r in ("ack", "sent", "delivered")]
    assert [(await f).outcome.kind for f in futures] == [lifecycle.Kind.MOVE] * 3
    assert (await stored(db, mid)).status == lifecycle.DELIVERED
    assert sorted(r["status"] for r in await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1", mid)) == sorted(
        ["queued", "dispatching", "sending", "sent", "delivered"])
    await writer.close()


async def test_with_the_database_away_every_waiting_report_fails_and_none_hangs(
        db: asyncpg.Connection, database_url: str) -> None:
    acc = await new_account(db)
    phone = await new_device(db, acc)
    mid = await new_message(db, acc, phone, status="dispatching")
    gone = await store.create_pool(database_url, min_size=1, max_size=1)
    await gone.close()  # every acquire now fails, as with the database away
    writer = ReportWriter(gone)
    futures = [writer.enqueue(Report(phone.id, mid, "ack", None)) for _ in range(3)]
    for f in futures:
        with pytest.raises(store.DATABASE_DOWN):
            await asyncio.wait_for(f, 5)
    assert (await stored(db, mid)).status == lifecycle.DISPATCHING  # nothing written
    await writer.close()
