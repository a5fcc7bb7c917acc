"""broker/delivery/remote.py: jobs another node committed `dispatching` for
a phone held here, handed on its word over the bus, or by the sweep when
that word was lost; with a real pool on the PostgreSQL of the test session
and phones on RecordingChannels.

What was handed shows on the phone's channel; PostgreSQL is only read (the
row stays `dispatching` for that phone: no commit on this side)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broker import store
from broker.delivery import remote as remote_module
from broker.delivery.presence import Presence
from broker.delivery.remote import RemoteJobs
from tests.conftest import RecordingChannel, new_account, new_device, new_message, online, stored

pytestmark = pytest.mark.timeout(30)
NODE = "here"


@pytest.fixture
async def remote(pool: store.Pool) -> AsyncIterator[RemoteJobs]:
    r = RemoteJobs(pool, Presence(), NODE)
    try:
        yield r
    finally:
        await r.close()


async def offered(channel: RecordingChannel, count: int, within_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + within_s
    while len(channel.offered) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return [j.id for j in channel.offered]


async def settled(remote: RemoteJobs) -> None:
    """Every read-and-hand started so far has ended."""
    while remote._tasks:
        await asyncio.gather(*remote._tasks, return_exceptions=True)


async def held_here(db: asyncpg.Connection, device: store.DeviceRow, node: str = NODE) -> None:
    """The shared presence row naming `node` as the phone's holder."""
    now = dt.datetime.now(dt.UTC)
    await db.execute("INSERT INTO presence (device_id, node, epoch, connected_at, last_seen_at)"
                     " VALUES ($1, $2, $3, $4, $4)", device.id, node, uuid.uuid4(), now)


async def test_a_job_committed_elsewhere_is_read_and_handed_to_its_phone(
        db: asyncpg.Connection, remote: RemoteJobs) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc, send_rate=5)
    mid = await new_message(db, acc, dev, status="dispatching")
    conn, channel = online(remote.presence, dev)
    remote.arrived(dev.id, mid)
    assert await offered(channel, 1) == [str(mid)]
    assert channel.offered[0].recipient == "+16502530000" and channel.offered[0].message == "hello"
    assert conn.inflight == {mid}
    assert conn.pacer.room(time.monotonic()) == 4  # one of its 5 a minute
    assert (await stored(db, mid)).status == "dispatching"  # read, not moved

    remote.arrived(dev.id, mid)  # the word twice (a bus may repeat): handed once
    await settled(remote)
    assert len(channel.offered) == 1


async def test_a_job_that_moved_on_or_a_phone_not_here_is_left_alone(
        db: asyncpg.Connection, remote: RemoteJobs) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    away = await new_device(db, acc, "away")
    failed = await new_message(db, acc, dev, status="failed", error="cancelled")
    for_away = await new_message(db, acc, away, status="dispatching")
    _, channel = online(remote.presence, dev)
    remote.arrived(dev.id, failed)  # cancelled before the word came
    remote.arrived(away.id, for_away)  # its phone is not connected here
    remote.arrived(dev.id, uuid.uuid4())  # no such job
    await settled(remote)
    assert channel.offered == []


async def test_a_job_waits_for_its_phones_room_then_goes(
        db: asyncpg.Connection, remote: RemoteJobs) -> None:
    """The sender counted only its own sends to the phone: here its window
    is full, so the job waits (still the phone's) until an answer frees it."""
    acc = await new_account(db)
    dev = await new_device(db, acc)
    busy = await new_message(db, acc, dev, status="dispatching")
    mid = await new_message(db, acc, dev, status="dispatching")
    conn, channel = online(remote.presence, dev, window=1)
    conn.inflight.add(busy)
    remote.arrived(dev.id, mid)
    await settled(remote)
    assert channel.offered == [] and mid in remote._later
    conn.inflight.discard(busy)  # the phone answered
    assert await offered(channel, 1) == [str(mid)]  # at its next look, a second later
    assert conn.inflight == {mid}


async def test_the_sweep_hands_the_jobs_whose_word_was_lost(
        db: asyncpg.Connection, remote: RemoteJobs) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    other = await new_device(db, acc, "at another node")
    lost = await new_message(db, acc, dev, status="dispatching")
    held = await new_message(db, acc, dev, status="dispatching")
    queued = await new_message(db, acc, dev)
    elsewhere = await new_message(db, acc, other, status="dispatching")
    await held_here(db, dev)
    await held_here(db, other, "another")
    conn, channel = online(remote.presence, dev)
    _, other_channel = online(remote.presence, other)  # stale here: its row names another
    conn.inflight.add(held)  # handed already: not again
    now = dt.datetime.now(dt.UTC)

    await remote.sweep(now - dt.timedelta(seconds=60), now - dt.timedelta(seconds=30))
    assert channel.offered == []  # younger than the sweep looks at: its word may be on the way

    await remote.sweep(now - dt.timedelta(seconds=60), now + dt.timedelta(seconds=1))
    assert [j.id for j in channel.offered] == [str(lost)]
    assert other_channel.offered == [] and remote.strays == 1
    assert {lost, held} == conn.inflight and queued not in conn.inflight
    assert (await stored(db, elsewhere)).status == "dispatching"

    await remote.sweep(now - dt.timedelta(seconds=60), now + dt.timedelta(seconds=1))
    assert len(channel.offered) == 1  # in flight now: the next sweep leaves it


async def test_room_kept_for_another_nodes_job_is_used_by_it_or_given_back(
        db: asyncpg.Connection, remote: RemoteJobs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The asking node's job goes in the room kept for it (the phone's pacer
    counted once); room kept for a job that never comes is free again."""
    monkeypatch.setattr(remote_module, "RESERVED_S", 0.2)
    acc = await new_account(db)
    dev = await new_device(db, acc, "only", send_rate=2)
    conn, channel = online(remote.presence, dev)
    assert remote.reserve(acc.id) == (dev.id, "only")
    assert remote.reserve(acc.id) == (dev.id, "only")
    assert remote.reserve(acc.id) is None  # its 2 a minute are kept
    assert remote.reserve(uuid.uuid4()) is None  # no phone of that account here

    mid = await new_message(db, acc, dev, status="dispatching")
    remote.arrived(dev.id, mid)
    assert await offered(channel, 1) == [str(mid)]
    assert conn.pacer.room(time.monotonic()) == 0  # the kept room, not one more

    await asyncio.sleep(0.3)  # the other kept room lapses: free again
    assert conn.pacer.room(time.monotonic()) == 1
    assert remote.reserve(acc.id) == (dev.id, "only")
