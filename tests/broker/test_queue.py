"""broker/delivery/queue.py: an account's queued jobs drained to its phones,
with a real pool on the PostgreSQL of the test session and phones on
RecordingChannels.

Whether a drain ran shows in PostgreSQL (a queued row claimed, or still
queued) and on the phone's channel (the job offered, or not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broker import store
from broker.delivery import queue as queue_module
from broker.delivery.presence import Presence
from broker.delivery.queue import Queue
from broker.errors import Unavailable
from tests.conftest import drained, new_account, new_device, new_message, online, stored

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def queue(pool: store.Pool) -> AsyncIterator[Queue]:
    q = Queue(pool, Presence())
    try:
        yield q
    finally:
        await q.close()


async def test_a_kick_hands_the_queued_jobs_oldest_first(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    first = await new_message(db, acc, dev)
    second = await new_message(db, acc, dev)
    conn, channel = online(queue.presence, dev)
    queue.kick(acc.id)
    await drained(queue)
    assert [j.id for j in channel.offered] == [str(first), str(second)]
    assert conn.inflight == {first, second}
    assert [(await stored(db, m)).status for m in (first, second)] == ["dispatching", "dispatching"]


async def test_a_kick_with_no_phone_online_leaves_the_jobs_queued(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    waiting = await new_message(db, acc, dev)
    queue.kick(acc.id)
    await drained(queue)
    assert (await stored(db, waiting)).status == "queued"


async def test_a_recent_empty_is_trusted_until_a_job_is_queued_here(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    _, channel = online(queue.presence, dev)
    queue.kick(acc.id)
    await drained(queue)  # found the queue empty

    # Queued behind this process's back (another broker): a phone's connect
    # trusts the recent "empty" and runs no drain...
    late = await new_message(db, acc, dev)
    queue.kick_unless_empty(acc.id)
    assert queue._drains == {}
    await drained(queue)
    assert (await stored(db, late)).status == "queued" and channel.offered == []

    # ...until this process queues one: `filled` ends the trust at once.
    queue.filled(acc.id)
    queue.kick_unless_empty(acc.id)
    await drained(queue)
    assert (await stored(db, late)).status == "dispatching"
    assert [j.id for j in channel.offered] == [str(late)]


async def test_an_empty_older_than_the_trust_is_looked_at_again(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    online(queue.presence, dev)
    queue.kick(acc.id)
    await drained(queue)
    late = await new_message(db, acc, dev)
    # The empty was found longer ago than the trust lasts.
    queue._empty_at[acc.id] -= queue_module.QUEUE_EMPTY_TRUST_S + 0.1
    queue.kick_unless_empty(acc.id)
    await drained(queue)
    assert (await stored(db, late)).status == "dispatching"


async def test_a_connect_with_no_drain_before_drains(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    waiting = await new_message(db, acc, dev)
    online(queue.presence, dev)
    queue.kick_unless_empty(acc.id)
    await drained(queue)
    assert (await stored(db, waiting)).status == "dispatching"


async def test_a_drain_takes_no_more_than_the_phones_window(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    jobs = [await new_message(db, acc, dev) for _ in range(3)]
    conn, channel = online(queue.presence, dev, window=2)
    queue.kick(acc.id)
    await drained(queue)
    assert [j.id for j in channel.offered] == [str(m) for m in jobs[:2]]
    assert (await stored(db, jobs[2])).status == "queued"
    # Not "empty": a full window is no reason to trust the queue empty...
    assert acc.id not in queue._empty_at
    # ...and the drain comes back for the rest (at the latest in a second).
    assert acc.id in queue._wakeups
    assert conn.inflight == set(jobs[:2])


async def test_a_drain_with_every_phone_at_its_rate_waits_for_room(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc, send_rate=1)
    waiting = await new_message(db, acc, dev)
    conn, channel = online(queue.presence, dev)
    conn.pacer.take(time.monotonic())  # this minute's one send is gone
    queue.kick(acc.id)
    await drained(queue)
    assert channel.offered == [] and (await stored(db, waiting)).status == "queued"
    handle = queue._wakeups[acc.id]
    # When the pacer's window has room again: a minute from the take.
    assert handle.when() - asyncio.get_running_loop().time() > 50


async def test_wake_at_none_does_nothing(db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    waiting = await new_message(db, acc, dev)
    online(queue.presence, dev)
    queue.wake_at(acc.id, None)
    assert queue._wakeups == {} and queue._drains == {}
    assert (await stored(db, waiting)).status == "queued"


async def test_wake_at_drains_at_that_moment_and_replaces_an_earlier_wakeup(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    waiting = await new_message(db, acc, dev)
    _, channel = online(queue.presence, dev)
    queue.wake_at(acc.id, time.monotonic() + 3600)
    later = queue._wakeups[acc.id]
    queue.wake_at(acc.id, time.monotonic())  # room now
    assert later.cancelled()
    while acc.id in queue._wakeups:  # the timer fires on the loop's next turn
        await asyncio.sleep(0)
    await drained(queue)
    assert (await stored(db, waiting)).status == "dispatching"
    assert [j.id for j in channel.offered] == [str(waiting)]


async def test_a_kick_during_a_drain_drains_once_more_after_it(
        db: asyncpg.Connection, queue: Queue) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    online(queue.presence, dev)
    queue.kick(acc.id)
    first = queue._drains[acc.id]
    queue.kick(acc.id)  # the running drain may have read the queue already
    assert queue._drains[acc.id] is first  # not a second drain beside it
    await first
    await asyncio.sleep(0)
    again = queue._drains.get(acc.id)
    assert again is not None and again is not first
    await drained(queue)


async def test_a_failed_drain_is_logged_and_retried(
        database_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    closed = await store.create_pool(database_url, min_size=1, max_size=1)
    await closed.close()  # every query on it fails
    q = Queue(closed, Presence())
    try:
        online(q.presence, dev)
        with caplog.at_level(logging.ERROR, logger="smsdora.queue"):
            q.kick(acc.id)
            await drained(q)
        assert any(r.message.startswith("queue drain failed") for r in caplog.records)
        handle = q._wakeups[acc.id]
        assert 0 < handle.when() - asyncio.get_running_loop().time() <= 1.0
    finally:
        await q.close()
    assert handle.cancelled()


async def test_after_close_nothing_drains(db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    waiting = await new_message(db, acc, dev)
    q = Queue(pool, Presence())
    _, channel = online(q.presence, dev)
    q.wake_at(acc.id, time.monotonic() + 3600)
    pending = q._wakeups[acc.id]
    await q.close()
    assert pending.cancelled() and q._wakeups == {}
    q.kick(acc.id)
    q.kick_unless_empty(acc.id)
    q.wake_at(acc.id, time.monotonic())
    assert q._drains == {} and q._wakeups == {}
    assert channel.offered == [] and (await stored(db, waiting)).status == "queued"


async def test_the_queue_bound_counts_the_backlog_once_a_moment_and_again_before_a_refusal(
        db: asyncpg.Connection, pool: store.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """`admit` counts an account's queued rows (up to the bound), then trusts
    that count plus its own admissions for _QUEUE_COUNT_TRUST_S: a queued
    send no longer counts the whole backlog each time. It only overstates
    (drains lower the real count), so a refusal counts again first."""
    monkeypatch.setattr(queue_module, "_QUEUE_COUNT_TRUST_S", 0.3)
    q = Queue(pool, Presence(), max_queued=3)
    acc = await new_account(db)
    dev = await new_device(db, acc)
    await new_message(db, acc, dev)
    await q.admit(pool, acc.id)  # counted: 1, and this one
    await q.admit(pool, acc.id)  # 3 by its count, no query
    await q.admit(pool, acc.id)  # at the bound by its count: counted again, 1 in truth
    behind = [await new_message(db, acc, dev) for _ in range(2)]  # another node's: 3 in truth
    await q.admit(pool, acc.id)  # the count of a moment ago (2) is trusted
    await asyncio.sleep(0.35)
    with pytest.raises(Unavailable, match="Too many queued messages"):
        await q.admit(pool, acc.id)  # counted again: 3
    await db.execute("UPDATE messages SET status = 'failed' WHERE id = ANY($1)", behind)
    await q.admit(pool, acc.id)  # a refusal's count is not trusted: counted again, 1
