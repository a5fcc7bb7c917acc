"""A node's batch statements on shared rows (devices' last-seen, keys' last
use, presence rows, the reaper) lock those rows in id order, whatever the
order of their input and whatever plan PostgreSQL picks: two nodes' batches
naming the same rows (a phone that moved between nodes, a key used at both)
then never hold one row while waiting for another the other batch holds.
Such a cycle cost a second (PostgreSQL's deadlock check) and a batch
dropped: a phone's last-seen and online node lost until its next frame.

Each test holds the earlier row in another transaction, gives the statement
the later one first (first in its input and first in the table's pages),
and checks that while it waits it holds nothing: the later row can still
be locked at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from broker import keys, store
from broker.store import cluster
from broker.store import keys as key_store
from tests.conftest import new_account, new_device

pytestmark = pytest.mark.timeout(30)
LONG_S = 30.0


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def waits_holding_nothing(database_url: str, table: str, column: str,
                                later: uuid.UUID, earlier: uuid.UUID,
                                statement: Callable[[], Awaitable[object]]) -> None:
    """`statement` (given `later` first) waits for `earlier`, held here,
    without holding `later`; once `earlier` is let go, it ends."""
    holder = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.execute(f"SELECT 1 FROM {table} WHERE {column} = $1 FOR UPDATE", earlier)
        running = asyncio.ensure_future(statement())
        await asyncio.sleep(0.3)
        assert not running.done(), "the statement did not wait for the earlier row"
        await holder.execute("SET LOCAL lock_timeout = '200ms'")
        # Old code: it took the later row first and holds it; this times out.
        await holder.execute(f"SELECT 1 FROM {table} WHERE {column} = $1 FOR UPDATE", later)
        await holder.execute("ROLLBACK")
        await asyncio.wait_for(running, 5)
    finally:
        await holder.close()


async def two_devices(db: asyncpg.Connection) -> tuple[store.DeviceRow, store.DeviceRow]:
    """(later, earlier) by id, the later written first."""
    acc = await new_account(db)
    while True:
        later, earlier = await new_device(db, acc, "a"), await new_device(db, acc, "b")
        if later.id > earlier.id:
            return later, earlier


async def on_node(pool: store.Pool, node: str, *devices: store.DeviceRow) -> uuid.UUID:
    """`node` holds a live lease and these phones' presence rows; its epoch."""
    epoch = uuid.uuid4()
    assert await cluster.claim_lease(pool, node, epoch, LONG_S) is None
    assert await cluster.register_online(pool, node, epoch, [d.id for d in devices],
                                         [now()] * len(devices))
    return epoch


async def test_last_seen_flush_locks_devices_in_id_order(
        db: asyncpg.Connection, database_url: str, pool: store.Pool) -> None:
    later, earlier = await two_devices(db)
    await waits_holding_nothing(
        database_url, "devices", "id", later.id, earlier.id,
        lambda: store.flush_last_seen(pool, [later.id, earlier.id], [now(), now()],
                                      [None, None], [None, None], [True, True], "a"))
    rows = await db.fetch("SELECT online_node FROM devices WHERE id = ANY($1::uuid[])",
                          [later.id, earlier.id])
    assert [r["online_node"] for r in rows] == ["a", "a"]


async def test_keys_last_use_flush_locks_keys_in_id_order(
        db: asyncpg.Connection, database_url: str, pool: store.Pool) -> None:
    acc = await new_account(db)

    async def key() -> uuid.UUID:
        full, prefix = keys.make_secret(keys.KEY_KIND)
        return (await store.insert_key(db, acc.id, "k", prefix, keys.digest(b"s", full),
                                       ["send"], None, None)).id

    while True:
        later, earlier = await key(), await key()
        if later > earlier:
            break
    at = now()
    await waits_holding_nothing(database_url, "api_keys", "id", later, earlier,
                                lambda: key_store.mark_keys_used(pool, {later: at, earlier: at}))
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE id = ANY($1::uuid[])"
                             " AND last_used_at = $2", [later, earlier], at) == 2


async def test_presence_rows_taken_over_in_id_order(
        db: asyncpg.Connection, database_url: str, pool: store.Pool) -> None:
    """A node taking over phones another node's rows still name."""
    later, earlier = await two_devices(db)
    await on_node(pool, "a", later, earlier)
    b = uuid.uuid4()
    assert await cluster.claim_lease(pool, "b", b, LONG_S) is None
    await waits_holding_nothing(
        database_url, "presence", "device_id", later.id, earlier.id,
        lambda: cluster.register_online(pool, "b", b, [later.id, earlier.id], [now(), now()]))
    assert await cluster.online_elsewhere(pool, "a", [later.id, earlier.id]) == {
        later.id: "b", earlier.id: "b"}


async def test_presence_last_seen_and_goodbyes_lock_in_id_order(
        db: asyncpg.Connection, database_url: str, pool: store.Pool) -> None:
    later, earlier = await two_devices(db)
    a = await on_node(pool, "a", later, earlier)
    seen = now() + dt.timedelta(seconds=5)
    await waits_holding_nothing(
        database_url, "presence", "device_id", later.id, earlier.id,
        lambda: cluster.touch_online(pool, "a", a, [later.id, earlier.id], [seen, seen]))
    assert await db.fetchval("SELECT count(*) FROM presence WHERE last_seen_at = $1", seen) == 2
    await waits_holding_nothing(
        database_url, "presence", "device_id", later.id, earlier.id,
        lambda: cluster.unregister_online(pool, "a", a, [later.id, earlier.id]))
    assert await db.fetchval("SELECT count(*) FROM presence WHERE device_id = ANY($1::uuid[])",
                             [later.id, earlier.id]) == 0


async def test_reaper_locks_a_lapsed_nodes_rows_in_id_order(
        db: asyncpg.Connection, database_url: str, pool: store.Pool) -> None:
    later, earlier = await two_devices(db)
    await on_node(pool, "gone", later, earlier)
    await db.execute("UPDATE nodes SET lease_until = now() - interval '1 second'"
                     " WHERE name = 'gone'")
    me = uuid.uuid4()
    assert await cluster.claim_lease(pool, "me", me, LONG_S) is None

    async def reap() -> list[cluster.Reaped] | None:
        async with pool.acquire() as conn:
            return await cluster.reap_lapsed(conn, "me", me)

    await waits_holding_nothing(database_url, "presence", "device_id", later.id, earlier.id,
                                reap)
    assert await db.fetchval("SELECT count(*) FROM presence") == 0
