"""broker/delivery/sweeper.py: the lifecycle's clocks (contract section 5),
one `sweep()` at a time, with a real pool on the PostgreSQL of the test
session and phones on RecordingChannels."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pytest

from broker import store
from broker.delivery.presence import Presence
from broker.delivery.sweeper import Sweeper
from broker.settings import Settings
from tests.conftest import Stored, new_account, new_device, new_message, online, stored

pytestmark = pytest.mark.timeout(30)


def sweeper(pool: store.Pool, presence: Presence, tmp_path: Path) -> Sweeper:
    s = Sweeper(pool, presence, Settings(home=tmp_path, reassign_after_s=60,
                                         no_report_after_s=3600))
    s.started_at = time.time() - 7200  # as if this process had run for hours
    return s


async def test_a_job_past_its_ttl_fails_expired_and_its_phone_gets_a_cancel(
        db: asyncpg.Connection, pool: store.Pool, tmp_path: Path) -> None:
    presence = Presence()
    account = await new_account(db)
    device = await new_device(db, account)
    conn, channel = online(presence, device, window=1)
    mid = await new_message(db, account, device, "dispatching")
    conn.inflight.add(mid)
    await db.execute("UPDATE messages SET expires_at = now() - interval '1 s' WHERE id = $1", mid)
    await sweeper(pool, presence, tmp_path).sweep()
    assert await stored(db, mid) == Stored("failed", "expired", str(device.id))
    assert channel.cancelled == [(str(mid), "expired")]
    assert conn.inflight == set()  # its room is back
    history = [r["status"] for r in await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1 ORDER BY at", mid)]
    assert history[-1] == "failed"


async def test_a_job_within_its_ttl_is_left_alone(db: asyncpg.Connection, pool: store.Pool,
                                                  tmp_path: Path) -> None:
    presence = Presence()
    account = await new_account(db)
    device = await new_device(db, account)
    _, channel = online(presence, device)
    mid = await new_message(db, account, device, "dispatching")
    await db.execute("UPDATE messages SET expires_at = now() + interval '1 h' WHERE id = $1", mid)
    await sweeper(pool, presence, tmp_path).sweep()
    assert (await stored(db, mid)).status == "dispatching"
    assert channel.cancelled == []


async def test_a_job_in_sending_without_a_report_fails_no_report(
        db: asyncpg.Connection, pool: store.Pool, tmp_path: Path) -> None:
    presence = Presence()
    account = await new_account(db)
    device = await new_device(db, account)
    stale = await new_message(db, account, device, "sending")
    fresh = await new_message(db, account, device, "sending")
    await db.execute("UPDATE messages SET updated_at = now() - interval '2 h' WHERE id = $1", stale)
    await sweeper(pool, presence, tmp_path).sweep()
    assert await stored(db, stale) == Stored("failed", "no report", str(device.id))
    assert (await stored(db, fresh)).status == "sending"


async def test_a_job_never_acked_moves_to_a_phone_online_once_its_own_stayed_away(
        db: asyncpg.Connection, pool: store.Pool, tmp_path: Path) -> None:
    presence = Presence()
    account = await new_account(db)
    away = await new_device(db, account, "away")
    here = await new_device(db, account, "here")
    _, channel = online(presence, here)
    mid = await new_message(db, account, away, "dispatching")
    await db.execute("UPDATE messages SET updated_at = now() - interval '2 min' WHERE id = $1", mid)
    await db.execute("UPDATE devices SET last_seen_at = now() - interval '2 min' WHERE id = $1",
                     away.id)
    await sweeper(pool, presence, tmp_path).sweep()
    assert await stored(db, mid) == Stored("dispatching", None, str(here.id))
    assert [j.id for j in channel.offered] == [str(mid)]


async def test_a_job_whose_phone_is_online_or_back_in_time_stays(
        db: asyncpg.Connection, pool: store.Pool, tmp_path: Path) -> None:
    presence = Presence()
    account = await new_account(db)
    first = await new_device(db, account, "first")
    other = await new_device(db, account, "other")
    online(presence, first)  # its own phone is connected: it has the job
    _, other_channel = online(presence, other)  # the freshest, with room
    mid = await new_message(db, account, first, "dispatching")
    await db.execute("UPDATE messages SET updated_at = now() - interval '2 min' WHERE id = $1", mid)
    await db.execute("UPDATE devices SET last_seen_at = now() - interval '2 min' WHERE id = $1",
                     first.id)
    await sweeper(pool, presence, tmp_path).sweep()
    assert (await stored(db, mid)).device_id == str(first.id)
    assert other_channel.offered == []


async def test_expired_dashboard_sessions_are_purged_and_live_ones_kept(
        db: asyncpg.Connection, pool: store.Pool, tmp_path: Path) -> None:
    from broker.store import sessions

    account = await new_account(db)
    await sessions.create_session(db, "live-token", account.id, "c", 3600)
    await sessions.create_session(db, "old-token", account.id, "c", 3600)
    await db.execute("UPDATE sessions SET expires_at = now() - interval '1 s'"
                     " WHERE token_hash = $1", sessions.token_hash("old-token"))
    await sweeper(pool, Presence(), tmp_path).sweep()
    left = [r[0] for r in await db.fetch("SELECT token_hash FROM sessions")]
    assert left == [sessions.token_hash("live-token")]
