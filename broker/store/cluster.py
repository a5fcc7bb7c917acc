"""Nodes and presence rows (CONTRACT section 13): each broker process holds
a lease on its node name under a random epoch, and every online phone is a
row naming the node and epoch that hold its connection. A node whose lease
lapsed holds nobody: every read here joins the live leases, and the reaper
removes its rows, writing the device.offline it could not (section 9)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import msgspec

from broker.store.pool import Conn, Db, rows_of

# One reaper at a time across nodes (migrate.py's lock is 0x5D5D0001).
_REAP_LOCK = 0x5D5D0002
# The rows of nodes that hold a live lease: `p` is presence.
_LIVE = "JOIN nodes n ON n.name = p.node AND n.epoch = p.epoch AND n.lease_until > now()"


class Holder(msgspec.Struct, frozen=True):
    """Who holds a node name now, as a refused claim found it."""
    epoch: uuid.UUID
    lease_left_s: float  # negative: lapsed (and not reaped yet)
    process: str | None = None  # boot/pid-namespace/pid, as it claimed


class Online(msgspec.Struct, frozen=True):
    device_id: uuid.UUID
    node: str
    last_seen_at: dt.datetime
    name: str  # the device's


class Reaped(msgspec.Struct, frozen=True):
    device_id: uuid.UUID
    account_id: uuid.UUID
    node: str


def _secs(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


# --- leases -----------------------------------------------------------------


async def claim_lease(db: Db, node: str, epoch: uuid.UUID, lease_s: float,
                      address: str | None = None,
                      stale_s: float | None = None, process: str | None = None) -> Holder | None:
    """Take the node name for `lease_s` under `epoch`: None when taken. It is
    refused while another epoch's lease is live (two processes configured
    with one SMSDORA_NODE must not both run): the holder is returned. With
    `stale_s`, a holder that has not renewed for that long (a live one
    renews every lease / 3) counts as gone already: a process of this name
    that died takes over sooner than its whole lease."""
    early = _secs(max(0.0, lease_s - stale_s) if stale_s is not None else 0.0)
    got = await db.fetchval(
        "INSERT INTO nodes (name, epoch, lease_until, address, process)"
        " VALUES ($1, $2, now() + $3, $4, $6)"
        " ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch,"
        "   lease_until = EXCLUDED.lease_until, address = EXCLUDED.address,"
        "   process = EXCLUDED.process,"
        "   started_at = CASE WHEN nodes.epoch = EXCLUDED.epoch THEN nodes.started_at"
        "                     ELSE now() END"
        " WHERE nodes.epoch = EXCLUDED.epoch OR nodes.lease_until <= now() + $5"
        " RETURNING 1", node, epoch, _secs(lease_s), address, early, process)
    if got is not None:
        return None
    r = await db.fetchrow(
        "SELECT epoch, extract(epoch FROM lease_until - now())::float8 AS lease_left_s, process"
        " FROM nodes WHERE name = $1", node)
    if r is None:  # released between the two statements: try again
        return await claim_lease(db, node, epoch, lease_s, address, stale_s, process)
    return Holder(**dict(r))


async def renew_lease(db: Db, node: str, epoch: uuid.UUID, lease_s: float) -> bool:
    """Extend our lease; False: it is gone (reaped, or the name taken since),
    and with it every presence row we wrote."""
    return await db.fetchval(
        "UPDATE nodes SET lease_until = now() + $3 WHERE name = $1 AND epoch = $2 RETURNING true",
        node, epoch, _secs(lease_s)) is not None


async def release_lease(db: Db, node: str, epoch: uuid.UUID) -> None:
    """At a clean stop: our rows and our lease go (the phones' device.offline
    was written as each connection ended)."""
    await db.execute(
        "WITH p AS (DELETE FROM presence WHERE node = $1 AND epoch = $2)"
        " DELETE FROM nodes WHERE name = $1 AND epoch = $2", node, epoch)


# --- presence rows ----------------------------------------------------------


async def register_online(db: Db, node: str, epoch: uuid.UUID, device_ids: Sequence[uuid.UUID],
                          connected_at: Sequence[dt.datetime]) -> bool:
    """These phones are connected to us now, all in one statement (a
    reconnect storm is one batch); a row another node held is ours now.
    Written only under our live lease: False when we hold none."""
    batch = dict(zip(device_ids, connected_at, strict=True))  # one row per device
    return bool(await db.fetchval(
        "WITH live AS (SELECT 1 FROM nodes WHERE name = $1 AND epoch = $2"
        "              AND lease_until > now()),"
        " ins AS (INSERT INTO presence (device_id, node, epoch, connected_at, last_seen_at)"
        "   SELECT v.id, $1, $2, v.at, v.at FROM unnest($3::uuid[], $4::timestamptz[]) AS v(id, at)"
        "   WHERE EXISTS (SELECT 1 FROM live)"
        # In id order, as every statement on these rows takes them: a row
        # another node holds is locked here, and two nodes' batches never
        # wait for each other in a cycle.
        "   ORDER BY v.id"
        "   ON CONFLICT (device_id) DO UPDATE SET node = EXCLUDED.node, epoch = EXCLUDED.epoch,"
        "     connected_at = EXCLUDED.connected_at, last_seen_at = EXCLUDED.last_seen_at)"
        " SELECT EXISTS (SELECT 1 FROM live)",
        node, epoch, list(batch), list(batch.values())))


async def unregister_online(db: Db, node: str, epoch: uuid.UUID,
                            device_ids: Sequence[uuid.UUID]) -> None:
    """These phones' connections to us ended: their rows go, unless another
    node holds them by now."""
    await db.execute(
        "WITH l AS MATERIALIZED (SELECT device_id FROM presence"
        "   WHERE device_id = ANY($3::uuid[]) AND node = $1 AND epoch = $2"
        "   ORDER BY device_id FOR UPDATE)"
        " DELETE FROM presence WHERE device_id IN (SELECT device_id FROM l)"
        "   AND node = $1 AND epoch = $2",
        node, epoch, list(device_ids))


async def touch_online(db: Db, node: str, epoch: uuid.UUID, device_ids: Sequence[uuid.UUID],
                       seen: Sequence[dt.datetime]) -> None:
    """Last-seen of our rows, with the flush of devices' last-seen."""
    await db.execute(
        "WITH l AS MATERIALIZED (SELECT device_id FROM presence"
        "   WHERE device_id = ANY($3::uuid[]) AND node = $1 AND epoch = $2"
        "   ORDER BY device_id FOR UPDATE)"
        " UPDATE presence p SET last_seen_at = GREATEST(p.last_seen_at, v.seen)"
        " FROM unnest($3::uuid[], $4::timestamptz[]) AS v(id, seen)"
        " WHERE p.device_id = v.id AND p.device_id IN (SELECT device_id FROM l)"
        "   AND p.node = $1 AND p.epoch = $2",
        node, epoch, list(device_ids), list(seen))


async def online_elsewhere(db: Db, node: str,
                           device_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Which live node other than `node` holds each of these phones (the
    ones absent are held by no other live node)."""
    rows = await db.fetch(
        f"SELECT p.device_id, p.node FROM presence p {_LIVE}"
        " WHERE p.device_id = ANY($2::uuid[]) AND p.node <> $1", node, list(device_ids))
    return {r["device_id"]: r["node"] for r in rows}


async def holders_of(db: Db, account_id: uuid.UUID, exclude_node: str | None = None,
                     limit: int | None = None) -> list[Online]:
    """The account's active phones online on any live node (but
    `exclude_node`), the freshest first."""
    return rows_of(Online, await db.fetch(
        f"SELECT p.device_id, p.node, p.last_seen_at, d.name FROM presence p {_LIVE}"
        " JOIN devices d ON d.id = p.device_id"
        " WHERE d.account_id = $1 AND d.active AND p.node IS DISTINCT FROM $2"
        " ORDER BY p.last_seen_at DESC, p.device_id LIMIT $3",
        account_id, exclude_node, limit))


async def nodes_holding(db: Db, account_id: uuid.UUID, exclude_node: str) -> list[str]:
    """The live nodes but `exclude_node` holding an active phone of the account."""
    return [r["node"] for r in await db.fetch(
        f"SELECT DISTINCT p.node FROM presence p {_LIVE} JOIN devices d ON d.id = p.device_id"
        " WHERE d.account_id = $1 AND d.active AND p.node <> $2 ORDER BY p.node",
        account_id, exclude_node)]


async def live_nodes(db: Db) -> list[str]:
    """The nodes holding a live lease, ours included."""
    return [r["name"] for r in await db.fetch(
        "SELECT name FROM nodes WHERE lease_until > now() ORDER BY name")]


# --- the reaper ---------------------------------------------------------------


async def reap_lapsed(db: Conn, node: str, epoch: uuid.UUID) -> list[Reaped] | None:
    """Remove the leases that lapsed (never our own: we renew it) and every
    presence row no lease holds any more, writing each phone's device.offline
    in the same statement, so it is written once whichever node reaps.
    None: another node is reaping now."""
    async with db.transaction():
        if not await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", _REAP_LOCK):
            return None
        rows = await db.fetch(
            "WITH lapsed AS (DELETE FROM nodes WHERE lease_until <= now()"
            "                AND NOT (name = $1 AND epoch = $2) RETURNING name, epoch),"
            # A lapsed node's rows, and orphans: rows whose epoch is no
            # node's any more (a node restarted under its name, or reaped
            # while it was writing them).
            # Locked first in id order, as a node's batches take them.
            " doomed AS MATERIALIZED (SELECT p.device_id FROM presence p"
            "   WHERE (p.node, p.epoch) IN (SELECT name, epoch FROM lapsed)"
            "      OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.name = p.node AND n.epoch = p.epoch)"
            "   ORDER BY p.device_id FOR UPDATE OF p),"
            " gone AS (DELETE FROM presence p"
            "   WHERE p.device_id IN (SELECT device_id FROM doomed)"
            "     AND ((p.node, p.epoch) IN (SELECT name, epoch FROM lapsed)"
            "      OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.name = p.node AND n.epoch = p.epoch))"
            "   RETURNING p.device_id, p.node, p.last_seen_at),"
            # What the CLI reads (devices.online_node) says it too.
            " cleared AS (UPDATE devices d SET online_node = NULL FROM gone g"
            "   WHERE d.id = g.device_id AND d.online_node = g.node)"
            " SELECT g.device_id, d.account_id, g.node,"
            "   smsdora_device_event(d, false, GREATEST(g.last_seen_at, d.last_seen_at),"
            "                        NULL, NULL) AS events"
            " FROM gone g JOIN devices d ON d.id = g.device_id ORDER BY g.device_id",
            node, epoch)
    return [Reaped(r["device_id"], r["account_id"], r["node"]) for r in rows]
