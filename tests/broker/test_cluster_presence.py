"""broker/store/cluster.py, broker/cluster/leases.py and online.py: presence
rows and node leases shared in PostgreSQL (CONTRACT section 13).

"A node whose lease lapsed holds nobody"; "a node that dies sends no
device.offline; the others notice within a lease" (section 9)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import connect

from broker import keys, store
from broker.cluster.leases import NodeLease, NodeNameTaken, process_identity
from broker.cluster.online import OnlineRows
from broker.delivery.presence import Connection, Presence
from broker.settings import Settings
from broker.store import cluster
from tests.conftest import RecordingChannel, new_account, new_device
from tests.e2e.conftest import SECRET, start_server, stop_server, wait_for

pytestmark = pytest.mark.timeout(30)
LONG_S = 30.0


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def endpoint(db: asyncpg.Connection, account_id: uuid.UUID) -> None:
    await db.execute("INSERT INTO webhooks (id, account_id, url, events, secret)"
                     " VALUES ($1, $2, 'http://127.0.0.1:9/h', '{device.offline}', 'whsec_x')",
                     uuid.uuid4(), account_id)


async def offline_events(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT data FROM webhook_events WHERE type = 'device.offline'"
                          " ORDER BY seq")
    return [json.loads(r["data"]) for r in rows]


async def lapse(db: asyncpg.Connection, node: str) -> None:
    """The node stopped renewing, a lease ago."""
    await db.execute("UPDATE nodes SET lease_until = now() - interval '1 second'"
                     " WHERE name = $1", node)


# --- the store: two nodes as two sets of calls ------------------------------


async def test_a_phone_on_node_a_is_seen_online_at_a_by_node_b(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    dev, idle = await new_device(db, acc, "Pixel"), await new_device(db, acc, "Idle")
    a, b = uuid.uuid4(), uuid.uuid4()
    assert await cluster.claim_lease(pool, "a", a, LONG_S) is None
    assert await cluster.claim_lease(pool, "b", b, LONG_S) is None
    assert await cluster.register_online(pool, "a", a, [dev.id], [now()])
    assert await cluster.online_elsewhere(pool, "b", [dev.id, idle.id]) == {dev.id: "a"}
    assert await cluster.online_elsewhere(pool, "a", [dev.id]) == {}  # A holds it itself
    assert [(h.device_id, h.node) for h in await cluster.holders_of(pool, acc.id)] == [
        (dev.id, "a")]
    # It reconnects to B: the row is B's, and A's late unregister leaves it.
    assert await cluster.register_online(pool, "b", b, [dev.id], [now()])
    await cluster.unregister_online(pool, "a", a, [dev.id])
    assert await cluster.online_elsewhere(pool, "a", [dev.id]) == {dev.id: "b"}
    await cluster.unregister_online(pool, "b", b, [dev.id])
    assert await cluster.holders_of(pool, acc.id) == []


async def test_a_lapsed_node_holds_nobody_and_is_reaped_once_with_its_device_offline(
        db: asyncpg.Connection, pool: store.Pool, database_url: str) -> None:
    acc = await new_account(db)
    await endpoint(db, acc.id)
    dev = await new_device(db, acc, "Pixel")
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for node, epoch in (("a", a), ("b", b), ("c", c)):
        assert await cluster.claim_lease(pool, node, epoch, LONG_S) is None
    assert await cluster.register_online(pool, "a", a, [dev.id], [now()])
    await db.execute("UPDATE devices SET online_node = 'a' WHERE id = $1", dev.id)
    await lapse(db, "a")
    # Before anyone reaps: offline everywhere, by the join on live leases.
    assert await cluster.online_elsewhere(pool, "b", [dev.id]) == {}
    assert await cluster.holders_of(pool, acc.id) == []
    assert not await cluster.renew_lease(pool, "x", a, LONG_S)  # no such node
    # B and C reap at once: one of them removes it, one device.offline.
    conns = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        results = await asyncio.gather(cluster.reap_lapsed(conns[0], "b", b),
                                       cluster.reap_lapsed(conns[1], "c", c))
        again = await cluster.reap_lapsed(conns[0], "b", b)
    finally:
        for conn in conns:
            await conn.close()
    reaped = [r for result in results if result for r in result]
    assert [(r.device_id, r.account_id, r.node) for r in reaped] == [(dev.id, acc.id, "a")]
    assert again == []
    [event] = await offline_events(db)
    assert event == {"id": str(dev.id), "deviceName": "Pixel", "online": False,
                     "lastSeen": event["lastSeen"], "active": True, "sendRate": 0,
                     "health": None, "appVersion": None, "transport": "websocket"}
    assert await db.fetchval("SELECT online_node FROM devices WHERE id = $1", dev.id) is None
    assert await db.fetchval("SELECT count(*) FROM nodes WHERE name = 'a'") == 0
    assert not await cluster.renew_lease(pool, "a", a, LONG_S)  # A learns it lost


async def test_the_same_name_under_another_epoch_is_refused_while_the_lease_is_live(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    await endpoint(db, acc.id)
    dev = await new_device(db, acc)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert await cluster.claim_lease(pool, "a", first, LONG_S) is None
    assert await cluster.claim_lease(pool, "a", first, LONG_S) is None  # its own: renewed
    assert await cluster.register_online(pool, "a", first, [dev.id], [now()])
    held = await cluster.claim_lease(pool, "a", second, LONG_S)
    assert held is not None and held.epoch == first and 0 < held.lease_left_s <= LONG_S
    assert not await cluster.register_online(pool, "a", second, [dev.id], [now()])
    # The first process died: once its lease lapsed, the name is free, and
    # the rows of the dead epoch are nobody's (reaped by anyone, itself too).
    await lapse(db, "a")
    assert await cluster.claim_lease(pool, "a", second, LONG_S) is None
    assert not await cluster.renew_lease(pool, "a", first, LONG_S)
    assert await cluster.online_elsewhere(pool, "b", [dev.id]) == {}
    async with pool.acquire() as conn:
        assert [r.device_id for r in await cluster.reap_lapsed(conn, "a", second) or []] == [
            dev.id]
    assert len(await offline_events(db)) == 1


# --- the loop -------------------------------------------------------------------


def test_the_lease_is_ten_seconds_unless_set_and_never_zero() -> None:
    assert Settings.from_env({}).lease_s == 10.0
    assert Settings.from_env({"SMSDORA_LEASE_SECONDS": "2.5"}).lease_s == 2.5
    with pytest.raises(SystemExit, match="SMSDORA_LEASE_SECONDS must be more than 0"):
        Settings.from_env({"SMSDORA_LEASE_SECONDS": "0"})


def _noop() -> None:
    pass


def lease_of(pool: store.Pool, node: str, lease_s: float,
             reaped: list[cluster.Reaped] | None = None) -> NodeLease:
    return NodeLease(pool, node, lease_s, on_lost=_noop,
                     on_reaped=(reaped.extend if reaped is not None else lambda _: None))


async def test_a_second_process_under_a_live_name_is_refused_a_dead_ones_is_taken(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    live = lease_of(pool, "a", 0.6)
    await live.claim()
    live.start()
    try:
        started = time.monotonic()
        with pytest.raises(NodeNameTaken, match="SMSDORA_NODE"):
            await lease_of(pool, "a", 0.6).claim()
        assert time.monotonic() - started < 2.0  # about one lease
    finally:
        await live.stop()
    assert await db.fetchval("SELECT count(*) FROM nodes") == 0  # released: free at once
    dead = lease_of(pool, "b", 3.0)
    await dead.claim()  # and never renewed: it died
    its_lease_until = await db.fetchval("SELECT lease_until FROM nodes WHERE name = 'b'")
    taker = lease_of(pool, "b", 3.0)
    await taker.claim()
    # Taken once it missed a renewal, while its own lease had time to run:
    # a successor does not wait out the whole lease of one that died.
    assert await db.fetchval("SELECT now() < $1", its_lease_until)
    assert await db.fetchval("SELECT epoch FROM nodes WHERE name = 'b'") == taker.epoch


async def test_a_name_whose_process_died_on_this_machine_is_taken_at_once(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    """A crash and a restart (or a worker its supervisor restarts): the
    holder's pid, on this machine and in this pid namespace, is gone, so the
    successor takes the name without waiting to see it renew. A pid still
    alive is waited for as before."""
    here = process_identity().rpartition("/")[0]
    gone = subprocess.Popen(["true"])
    gone.wait()
    # A 30 s lease: a successor that waits at all waits 10 s or more.
    for holder_pid, instant, lease_s in ((gone.pid, True, LONG_S), (os.getppid(), False, 3.0)):
        crashed = lease_of(pool, "c", lease_s)
        await crashed.claim()  # never renewed
        await db.execute("UPDATE nodes SET process = $1 WHERE name = 'c'", f"{here}/{holder_pid}")
        started = time.monotonic()
        taker = lease_of(pool, "c", lease_s)
        await taker.claim()
        took = time.monotonic() - started
        assert await db.fetchval("SELECT epoch FROM nodes WHERE name = 'c'") == taker.epoch
        assert await db.fetchval("SELECT process FROM nodes WHERE name = 'c'") == \
            process_identity()
        if instant:
            assert took < LONG_S / 6, took
        else:
            assert took > 1.0, took  # waited to see whether it renews (lease / 3 and more)
        await taker.stop()


async def test_the_loop_renews_and_reaps_a_node_that_stopped_renewing(
        db: asyncpg.Connection, pool: store.Pool) -> None:
    acc = await new_account(db)
    await endpoint(db, acc.id)
    dev = await new_device(db, acc)
    reaped: list[cluster.Reaped] = []
    a, b = lease_of(pool, "a", 0.6), lease_of(pool, "b", 0.6, reaped)
    await a.claim()
    await b.claim()
    assert await cluster.register_online(pool, "a", a.epoch, [dev.id], [now()])
    b.start()  # A never renews: it is dead
    try:
        await wait_for(lambda: _true(bool(reaped)), timeout=3, what="B reaping A")
        assert await db.fetchval("SELECT count(*) FROM nodes WHERE name = 'b'"
                                 " AND lease_until > now()") == 1  # B renews
    finally:
        await b.stop()
    assert [r.device_id for r in reaped] == [dev.id]
    assert len(await offline_events(db)) == 1


async def _true(value: bool) -> bool:
    return value


# --- the rows of a reconnect storm --------------------------------------------------


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each presence-row statement OnlineRows sends: (function, rows)."""
    sent: list[tuple[str, int]] = []
    for name in ("register_online", "unregister_online"):
        real = getattr(cluster, name)

        def counted(*args: Any, _real: Callable[..., Any] = real, _name: str = name) -> Any:
            sent.append((_name, len(args[3])))
            return _real(*args)
        monkeypatch.setattr(cluster, name, counted)
    return sent


@pytest.fixture
async def rows(pool: store.Pool) -> AsyncIterator[tuple[Presence, OnlineRows]]:
    lease = lease_of(pool, "a", LONG_S)
    await lease.claim()
    presence = Presence()
    presence.changed = lambda conn, online: lease.rows.changed(conn.device_id, conn.connected_at,
                                                               online)
    yield presence, lease.rows
    await lease.stop()


async def test_a_reconnect_storm_of_1000_phones_is_a_handful_of_statements(
        db: asyncpg.Connection, pool: store.Pool, rows: tuple[Presence, OnlineRows],
        statements: list[tuple[str, int]]) -> None:
    presence, online = rows
    acc = await new_account(db)
    ids = [uuid.uuid4() for _ in range(1000)]
    await db.copy_records_to_table(
        "devices", columns=["id", "account_id", "name", "token_prefix", "token_hash"],
        records=[(i, acc.id, f"p{n}", keys.make_secret(keys.TOKEN_KIND)[1], b"x")
                 for n, i in enumerate(ids)])
    conns = [Connection(i, acc.id, "p", RecordingChannel(), presence.pacer(i, 0), time.time())
             for i in ids]
    started = time.perf_counter()
    for turn in range(4):  # the storm over four loop turns
        for conn in conns[turn * 250:(turn + 1) * 250]:
            presence.register(conn)
        await asyncio.sleep(0)
    await online.flush()
    took_s = time.perf_counter() - started
    assert await db.fetchval("SELECT count(*) FROM presence WHERE node = 'a'") == 1000
    assert len(statements) <= 4 and sum(n for _, n in statements) == 1000, statements
    assert took_s < 2.0
    # Half of them go and a tenth of those come back within one turn: one
    # statement each way, with the latest change of each phone.
    statements.clear()
    for conn in conns[:500]:
        presence.unregister(conn)
    for conn in conns[:50]:
        presence.register(conn)
    await online.flush()
    assert sorted(statements) == [("register_online", 50), ("unregister_online", 450)]
    assert await db.fetchval("SELECT count(*) FROM presence") == 550


async def test_rows_owed_while_the_lease_is_away_are_written_at_its_renewal(
        db: asyncpg.Connection, pool: store.Pool, rows: tuple[Presence, OnlineRows]) -> None:
    presence, online = rows
    acc = await new_account(db)
    dev = await new_device(db, acc)
    await lapse(db, "a")  # the database was away longer than a lease; nobody reaped
    presence.register(Connection(dev.id, acc.id, "p", RecordingChannel(),
                                 presence.pacer(dev.id, 0), time.time()))
    await online.flush()
    assert online.owed() == 1
    assert await cluster.renew_lease(pool, "a", online.epoch, LONG_S)
    await online.flush()
    assert online.owed() == 0
    assert await cluster.online_elsewhere(pool, "b", [dev.id]) == {dev.id: "a"}


# --- two real brokers on one database ----------------------------------------------------


async def test_two_brokers_share_presence_and_a_dead_ones_phone_goes_offline_once(
        db: asyncpg.Connection, database_url: str, tmp_path: Any) -> None:
    acc = await new_account(db)
    await endpoint(db, acc.id)
    token, prefix = keys.make_secret(keys.TOKEN_KIND)
    dev = await store.insert_device(db, acc.id, "Pixel", prefix, keys.digest(SECRET, token), 30)
    settings = Settings(home=tmp_path / "home", secret=SECRET, hello_timeout_s=2,
                        last_seen_flush_s=0.2, pool_min=1, pool_max=4, lease_s=0.9,
                        metrics_addr=None)
    a = await start_server(settings.with_(node="a"), database_url)
    b = await start_server(settings.with_(node="b"), database_url)
    try:
        async with connect(a.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                           compression=None, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "appVersion": "t/1"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
            assert b.broker.lease is not None and a.broker.lease is not None

            async def seen_at_a() -> bool:
                return await cluster.online_elsewhere(b.broker.pool, "b", [dev.id]) == {
                    dev.id: "a"}
            await wait_for(seen_at_a, what="B seeing the phone at A")
            # A stops renewing (as if it froze or died): B reaps it within a lease.
            task = a.broker.lease._task
            assert task is not None
            task.cancel()

            async def offline() -> bool:
                return bool(await offline_events(db))
            await wait_for(offline, timeout=3, what="device.offline from B")
            assert await cluster.online_elsewhere(b.broker.pool, "b", [dev.id]) == {}
            assert await cluster.holders_of(b.broker.pool, acc.id) == []
            await asyncio.sleep(0.6)  # two more turns of B's reaper: nothing more
            assert len(await offline_events(db)) == 1
    finally:
        await stop_server(b)
        await stop_server(a)
