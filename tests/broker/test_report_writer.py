"""broker/delivery/reports.py's ReportWriter on a real PostgreSQL: phones'
reports group-committed, each caller handed its own result, as soon as
the commit answers; a database away fails the reports, never hangs them."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from broker import store
from broker.delivery import reports
from broker.delivery.reports import Report, ReportWriter, Result, WriterClosed
from protocol import lifecycle
from tests.conftest import (
    later_id_first,
    new_account,
    new_device,
    new_message,
    rows_held,
    stored,
)


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


async def test_reports_that_move_their_messages_on_are_one_statement_and_its_commit(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    phone = await new_device(db, acc)
    warm, *mids = [await new_message(db, acc, phone, status="dispatching") for _ in range(6)]
    reports = [Report(phone.id, m, "ack", None) for m in mids]
    reports += [Report(phone.id, mids[0], "sent", None), Report(phone.id, mids[0], "delivered", None)]
    writer = ReportWriter(pool)
    async with pool.acquire() as conn:
        # The statement's first run on a connection: asyncpg's type lookups.
        await writer._write(conn, [Report(phone.id, warm, "ack", None)])
        statements: list[str] = []
        conn.add_query_logger(lambda q: statements.append(q.query))
        results = await writer._write(conn, reports)
    assert [r.outcome.kind for r in results] == [lifecycle.Kind.MOVE] * 7
    assert len(statements) == 1, statements  # no BEGIN, lock, COMMIT: one round trip
    assert "UPDATE messages" in statements[0] and "INSERT INTO message_history" in statements[0]
    assert (await stored(db, mids[0])).status == lifecycle.DELIVERED
    assert [(await stored(db, m)).status for m in mids[1:]] == [lifecycle.SENDING] * 4


async def test_without_the_lock_every_status_and_report_sequence_ends_as_with_it(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    """Two identical sets of messages, one per initial status and sequence
    of one or two reports, and one another phone reports: the lock-free path
    (`_write`) and the locking one (`_locked`, the decision in Python) give
    the same results, statuses, errors and history rows."""
    acc = await new_account(db)
    phone, other = await new_device(db, acc, "p"), await new_device(db, acc, "o")
    sequences = [(r,) for r in lifecycle.REPORTS] + [
        (a, b) for a in lifecycle.REPORTS for b in lifecycle.REPORTS]
    cases = [(status, seq, reporter) for status in lifecycle.STATUSES for seq in sequences
             for reporter in (phone, other) if reporter is phone or len(seq) == 1]

    async def messages() -> list[uuid.UUID]:
        return [await new_message(db, acc, phone, status=status,
                                  error="expired" if status == lifecycle.FAILED else None)
                for status, _, _ in cases]

    def batch(mids: list[uuid.UUID]) -> list[Report]:
        per = [[Report(reporter.id, m, r, "no SIM" if r == "failed" else None) for r in seq]
               for m, (_, seq, reporter) in zip(mids, cases, strict=True)]
        # Interleaved, as many phones' reports come: each message's in order.
        return [rs[i] for i in range(2) for rs in per if i < len(rs)]

    async def outcome(mids: list[uuid.UUID], results: list[Result],
                      reports: list[Report]) -> list[tuple[object, ...]]:
        by_message: dict[uuid.UUID, list[Result]] = {}
        for r, result in zip(reports, results, strict=True):
            by_message.setdefault(r.message_id, []).append(result)
        rows = []
        for m in mids:
            s = await stored(db, m)
            history = sorted(r["status"] for r in await db.fetch(
                "SELECT status FROM message_history WHERE message_id = $1", m))
            rows.append((by_message[m], s.status, s.error, history))
        return rows

    writer = ReportWriter(pool)
    locked_ids, free_ids = await messages(), await messages()
    locked_reports, free_reports = batch(locked_ids), batch(free_ids)
    async with pool.acquire() as conn:
        locked, _ = await writer._locked(conn, locked_reports)
        free = await writer._write(conn, free_reports)
    expected = await outcome(locked_ids, locked, locked_reports)
    got = await outcome(free_ids, free, free_reports)
    for case, want, have in zip(cases, expected, got, strict=True):
        assert have == want, (case[0], case[1], case[2] is other)
    assert {r.outcome.kind for r in free} == set(lifecycle.Kind)  # every kind was met


async def test_a_message_moved_meanwhile_is_decided_again_under_the_lock(
        db: asyncpg.Connection, pool: store.Pool, database_url: str) -> None:
    """A sweep fails the message while the report's statement waits for its
    row: the statement finds it no longer dispatching, moves nothing, and
    the report goes through the lock, which sees it failed: cancel."""
    acc = await new_account(db)
    phone = await new_device(db, acc)
    mid = await new_message(db, acc, phone, status="dispatching")
    async with rows_held(database_url) as sweep:
        await sweep.execute("UPDATE messages SET status = 'failed', error = 'expired'"
                            " WHERE id = $1", mid)
        writer = ReportWriter(pool)
        pending = writer.enqueue(Report(phone.id, mid, "ack", None))
        await asyncio.sleep(0.3)
        assert not pending.done()  # waiting for the row
        await sweep.execute("COMMIT")
    result = await asyncio.wait_for(pending, 5)
    assert result.outcome.kind is lifecycle.Kind.CANCEL
    assert result.error == "expired"
    assert (await stored(db, mid)).status == lifecycle.FAILED
    assert "sending" not in {r["status"] for r in await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1", mid)}
    await writer.close()


async def test_reports_a_moment_apart_wait_for_each_other_and_share_a_commit(
        db: asyncpg.Connection, pool: store.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that finds the writer idle waits for company (LINGER_S):
    two phones' reports a few loop turns and a millisecond apart are one
    statement and one commit, not one each."""
    monkeypatch.setattr(reports, "LINGER_S", 0.2)
    acc = await new_account(db)
    phones = [await new_device(db, acc, f"p{i}") for i in range(2)]
    mids = [await new_message(db, acc, p, status="dispatching") for p in phones]
    written: list[int] = []
    writer = ReportWriter(pool, lambda batch: written.append(len(batch)))
    first = writer.enqueue(Report(phones[0].id, mids[0], "ack", None))
    await asyncio.sleep(0.01)
    assert not first.done()  # waiting for company
    second = writer.enqueue(Report(phones[1].id, mids[1], "ack", None))
    results = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [r.outcome.kind for r in results] == [lifecycle.Kind.MOVE] * 2
    assert written == [2]
    await writer.close()


async def test_a_lone_report_is_written_once_it_has_waited_its_linger(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    phone = await new_device(db, acc)
    mid = await new_message(db, acc, phone, status="dispatching")
    writer = ReportWriter(pool)
    result = await asyncio.wait_for(writer.enqueue(Report(phone.id, mid, "ack", None)), 5)
    assert result.outcome.kind is lifecycle.Kind.MOVE
    assert (await stored(db, mid)).status == lifecycle.SENDING
    await writer.close()


async def test_a_full_batch_is_written_at_once_whatever_the_linger(
        db: asyncpg.Connection, pool: store.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """FULL reports waiting end the wait: with a linger of a minute, FULL
    reports queued over several loop turns are written within seconds."""
    monkeypatch.setattr(reports, "LINGER_S", 60.0)
    monkeypatch.setattr(reports, "FULL", 4)
    acc = await new_account(db)
    phone = await new_device(db, acc)
    mids = [await new_message(db, acc, phone, status="dispatching") for _ in range(4)]
    written: list[int] = []
    writer = ReportWriter(pool, lambda batch: written.append(len(batch)))
    futures = []
    for mid in mids:
        futures.append(writer.enqueue(Report(phone.id, mid, "ack", None)))
        await asyncio.sleep(0.01)
    assert not any(f.done() for f in futures[:3])
    results = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert [r.outcome.kind for r in results] == [lifecycle.Kind.MOVE] * 4
    assert written == [4]
    await writer.close()


async def test_closing_the_writer_fails_the_reports_it_did_not_write(
        db: asyncpg.Connection, pool: store.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lingering report, and one queued after the close, fail with
    WriterClosed (a database-down error: NOT_STORED to a phone, 503 over
    HTTP), never left waiting; nothing is written."""
    monkeypatch.setattr(reports, "LINGER_S", 60.0)
    acc = await new_account(db)
    phone = await new_device(db, acc)
    mid = await new_message(db, acc, phone, status="dispatching")
    writer = ReportWriter(pool)
    pending = writer.enqueue(Report(phone.id, mid, "ack", None))
    await asyncio.sleep(0.05)
    await writer.close()
    late = writer.enqueue(Report(phone.id, mid, "ack", None))
    for future in (pending, late):
        assert isinstance(future.exception(), WriterClosed)
        assert isinstance(future.exception(), store.DATABASE_DOWN)
    await asyncio.sleep(0.05)
    assert (await stored(db, mid)).status == lifecycle.DISPATCHING  # nothing written


async def test_closing_the_writer_mid_write_fails_that_batch_too(
        db: asyncpg.Connection, pool: store.Pool, database_url: str) -> None:
    """Closed while its statement waits for a row another transaction
    holds: every report of that batch fails with WriterClosed."""
    acc = await new_account(db)
    phone = await new_device(db, acc)
    mids = [await new_message(db, acc, phone, status="dispatching") for _ in range(2)]
    async with rows_held(database_url, mids):
        writer = ReportWriter(pool)
        pending = [writer.enqueue(Report(phone.id, m, "ack", None)) for m in mids]
        await asyncio.sleep(0.3)  # the batch waits for the rows
        assert not any(f.done() for f in pending)
        await writer.close()
    assert all(isinstance(f.exception(), WriterClosed) for f in pending)
    assert [(await stored(db, m)).status for m in mids] == [lifecycle.DISPATCHING] * 2


async def test_the_one_statement_locks_its_messages_in_id_order_as_a_listing_does(
        db: asyncpg.Connection, pool: store.Pool, database_url: str) -> None:
    """A listing (store/holds.py) locks a phone's jobs in id order. A batch
    that named the later one first locked it, then waited for the listing,
    which waited for it: PostgreSQL ended one of the two after a second."""
    acc = await new_account(db)
    phone = await new_device(db, acc)
    # The later id written first, and named first in the batch: in every
    # plan of an update without the ordered lock, the later is locked first.
    last, first = await later_id_first(db, acc, phone)
    async with rows_held(database_url, [first]) as listing:
        writer = ReportWriter(pool)
        pending = [writer.enqueue(Report(phone.id, m, "ack", None)) for m in (last, first)]
        await asyncio.sleep(0.3)  # the batch is waiting for `first`
        assert not any(p.done() for p in pending)
        # `last` is not held by the waiting batch: the listing takes it at
        # once (on the old code it waited, and the deadlock check ended the
        # batch's statement after a second, deadlock_timeout).
        await listing.execute("SET LOCAL lock_timeout = '200ms'")
        await listing.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", last)
    results = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert [r.outcome.kind for r in results] == [lifecycle.Kind.MOVE] * 2
    await writer.close()


async def test_a_report_naming_another_phones_job_neither_waits_for_nor_locks_it(
        db: asyncpg.Connection, pool: store.Pool, database_url: str) -> None:
    """Phone A reports on phone B's job (its id learnt somehow) while B's
    own report holds that job's row: A's report is not yours at once, and
    never held B's row (it waited for it before)."""
    acc = await new_account(db)
    a, b = await new_device(db, acc, "a"), await new_device(db, acc, "b")
    theirs = await new_message(db, acc, b, status="dispatching")
    async with rows_held(database_url, [theirs]):
        writer = ReportWriter(pool)
        result = await asyncio.wait_for(writer.enqueue(Report(a.id, theirs, "ack", None)), 3)
    assert result.outcome is lifecycle.NOT_YOURS
    assert (await stored(db, theirs)).status == lifecycle.DISPATCHING
    await writer.close()
