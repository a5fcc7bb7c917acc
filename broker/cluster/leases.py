"""The lease a node holds on its name (CONTRACT section 13): claimed at
start, renewed every third of `SMSDORA_LEASE_SECONDS`, released at a clean
stop. Each turn also reaps the other nodes' lapsed leases: a node that dies
writes no device.offline, the others notice within a lease (section 9)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from broker import store
from broker.cluster.online import OnlineRows
from broker.errors import BrokerError
from broker.store import cluster

log = logging.getLogger("smsdora.cluster")


class NodeNameTaken(BrokerError):
    """Another live process holds this node's name."""


class NodeLease:
    def __init__(self, pool: store.Pool, node: str, lease_s: float, *,
                 on_lost: Callable[[], None],
                 on_reaped: Callable[[list[cluster.Reaped]], None],
                 on_live: Callable[[list[str]], None] = lambda _nodes: None) -> None:
        self.pool = pool
        self.node = node
        self.lease_s = lease_s
        self.epoch = uuid.uuid4()  # this process start's
        self.process = process_identity()  # where it runs, for a successor to see
        self.rows = OnlineRows(pool, node, self.epoch)
        self._on_lost = on_lost  # the lease was lost: drop every phone
        self._on_reaped = on_reaped  # dead nodes' phones went offline
        self._on_live = on_live  # the nodes holding a live lease, counted each turn
        self._task: asyncio.Task[None] | None = None

    async def claim(self) -> None:
        """Take the name, or wait out a lease that may be lapsing (a
        process of this name that died a moment ago); one renewed meanwhile
        is a live process: NodeNameTaken. Then count the live nodes."""
        await self._take_name()
        self._on_live(await cluster.live_nodes(self.pool))

    async def _take_name(self) -> None:
        holder = await cluster.claim_lease(self.pool, self.node, self.epoch, self.lease_s,
                                           process=self.process)
        if holder is None:
            return
        if died_here(holder.process, self.process):
            # Its process ran on this machine and is gone (a crash, then this
            # restart): nothing to wait for.
            log.warning("node name held by a process that is gone: taking it", extra={
                "node": self.node, "holder": str(holder.epoch)})
            holder = await cluster.claim_lease(self.pool, self.node, self.epoch, self.lease_s,
                                               stale_s=0.0, process=self.process)
            if holder is None:
                return
        # A live holder renews every lease / 3: one silent for that long and
        # a margin more (a sixth of the lease, at most a second) is taken for
        # dead: this name's process restarted after a crash starts in ~4.3 s
        # at the default lease, not ~10 s.
        stale_s = self.lease_s / 3 + min(1.0, self.lease_s / 6)
        wait_s = min(holder.lease_left_s, holder.lease_left_s - self.lease_s + stale_s)
        log.warning("node name held: waiting to see whether its holder renews", extra={
            "node": self.node, "holder": str(holder.epoch), "wait_s": round(wait_s, 2)})
        await asyncio.sleep(max(0.0, wait_s) + 0.05)
        holder = await cluster.claim_lease(self.pool, self.node, self.epoch, self.lease_s,
                                           stale_s=stale_s, process=self.process)
        if holder is not None:
            raise NodeNameTaken(
                f"another live process holds node name {self.node!r} (epoch {holder.epoch}):"
                " give every process its own SMSDORA_NODE")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.turn()
            except store.DATABASE_DOWN as err:
                log.warning("lease not renewed", extra={"error": type(err).__name__})
            except Exception:
                log.exception("lease turn failed")  # the next turn tries again

    async def turn(self) -> None:
        """Renew (claiming again if the lease was lost), write the presence
        rows still owed, reap the others."""
        if not await cluster.renew_lease(self.pool, self.node, self.epoch, self.lease_s):
            # Reaped while we could not renew: the others wrote our phones'
            # device.offline and see them nowhere. They reconnect, and are
            # registered anew (to us or to another node).
            log.error("lease lost: dropping every phone", extra={"node": self.node})
            self._on_lost()
            holder = await cluster.claim_lease(self.pool, self.node, self.epoch, self.lease_s,
                                               process=self.process)
            if holder is not None:
                log.error("node name taken by another process", extra={
                    "node": self.node, "holder": str(holder.epoch)})
                return
        await self.rows.flush()
        self._on_live(await cluster.live_nodes(self.pool))
        async with self.pool.acquire() as conn:
            reaped = await cluster.reap_lapsed(conn, self.node, self.epoch)
        if reaped:
            log.info("lapsed phones reaped", extra={
                "count": len(reaped), "nodes": sorted({r.node for r in reaped})})
            self._on_reaped(reaped)

    async def stop(self) -> None:
        """At a clean stop, after the phones were closed: their rows and the
        lease go, so that the name is free at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.rows.close()
        try:
            await cluster.release_lease(self.pool, self.node, self.epoch)
        except store.DATABASE_DOWN as err:
            log.warning("lease not released: it lapses", extra={"error": type(err).__name__})


def process_identity() -> str:
    """This process as `boot/pid-namespace/pid`: two processes with the same
    first two parts can see each other's pids."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot, namespace = "?", "?"
    return f"{boot}/{namespace}/{os.getpid()}"


def died_here(holder: str | None, me: str) -> bool:
    """Whether the holder's process ran where we can see its pid, and is
    gone (a pid still in use, even by another program, counts as alive:
    then the holder is waited for, as for one elsewhere)."""
    if holder is None or "?" in holder:
        return False
    where, _, pid = holder.rpartition("/")
    if where != me.rpartition("/")[0] or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's, say)
    return False
