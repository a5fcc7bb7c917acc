"""Jobs another node committed for a phone held here (CONTRACT section 13).

A node that takes a send for an account with no phone of its own asks the
node holding the account's freshest phone for one with room (`reserve`:
picked here as for a send of our own, its room kept for the job), commits
the job `dispatching` for it, and says so over the bus after the commit
(`d DEVICE MESSAGE`, broker/cluster/peers.py). Here the job is read (a
read, no commit: the one commit on its path is the sender's) and handed to
the phone in the room kept for it. Without that room (its word came after
`RESERVED_S`) it waits for the phone's next room; it stays the phone's:
only the phone can say it does not hold a job, so no node moves it while
the phone is online.

The bus may lose that word (it promises at most once): the job then waits
`dispatching` for a phone of ours that never got it, which neither the
phone's reconnect nor the sweeper's reassignment (the phone is online)
would mend. So every sweep looks for such jobs of the last reassign delay
and hands those no connection of ours holds: a lost wake-up costs a sweep
or two. A job handed twice costs nothing: the phone keys its work by id.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
import uuid

from broker import store
from broker.delivery.handoff import hand, job_of
from broker.delivery.presence import Presence
from broker.lookups import Coalescer

log = logging.getLogger("smsdora.cluster")
# Room kept for another node's job this long (its commit and its word).
RESERVED_S = 5.0


class RemoteJobs:
    def __init__(self, pool: store.Pool, presence: Presence, node: str) -> None:
        self.pool = pool
        self.presence = presence
        self.node = node
        # The wake-ups of one moment share one read.
        self._jobs: Coalescer[uuid.UUID, store.Dispatched] = Coalescer(
            functools.partial(store.dispatched_jobs, pool))
        self._tasks: set[asyncio.Task[None]] = set()
        self._later: dict[uuid.UUID, asyncio.TimerHandle] = {}  # job -> look again then
        # Room kept for other nodes' jobs: device -> when each was taken.
        self._kept: dict[uuid.UUID, list[float]] = {}
        self._closing = False
        self.strays = 0  # jobs handed by a sweep: their wake-up was lost (tests)

    def reserve(self, account_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        """Another node asks for a phone of the account with room: the
        freshest, as for a send here, its room taken and kept RESERVED_S for
        that node's job (given back then if the job never came)."""
        now = time.monotonic()
        picked = None if self._closing else self.presence.pick(account_id, now)
        if picked is None or not picked[1]:
            return None
        conn = picked[0]
        conn.pacer.take(now)
        self._kept.setdefault(conn.device_id, []).append(now)
        asyncio.get_running_loop().call_later(RESERVED_S, self._unkeep, conn.device_id, now)
        return conn.device_id, conn.name

    def _unkeep(self, device_id: uuid.UUID, taken: float) -> None:
        """The job the room was kept for never came: the room is free."""
        kept = None if self._closing else self._kept.get(device_id)
        if kept is None or taken not in kept:
            return  # used
        kept.remove(taken)
        if not kept:
            del self._kept[device_id]
        conn = self.presence.get(device_id)
        if conn is not None:
            conn.pacer.give_back(taken)
            self.presence.room_freed(conn, time.monotonic())

    def _use_kept(self, device_id: uuid.UUID) -> bool:
        kept = self._kept.get(device_id)
        if not kept:
            return False
        kept.pop(0)
        if not kept:
            del self._kept[device_id]
        return True

    def arrived(self, device_id: uuid.UUID, message_id: uuid.UUID) -> None:
        """The bus: a job for `device_id` is committed. Not ours (any more):
        the phone's reconnect elsewhere gives it, or the sweeper moves it."""
        self._look_later(message_id, None)  # a timer's own call, or the word again
        conn = self.presence.get(device_id)
        if conn is None or message_id in conn.inflight or self._closing:
            return
        task = asyncio.get_running_loop().create_task(self._read_and_hand(message_id))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The database away, say: the sweep finds the job again.
            log.warning("job for a phone here not handed: the next sweep looks again",
                        extra={"error": type(task.exception()).__name__})

    async def _read_and_hand(self, message_id: uuid.UUID) -> None:
        job = await self._jobs.get(message_id)
        if job is not None:  # else moved on meanwhile: cancelled, expired, asked back
            await self._hand(job)

    async def _hand(self, job: store.Dispatched) -> None:
        conn = self.presence.get(job.device_id)
        if conn is None or job.id in conn.inflight or self._closing:
            return
        now = time.monotonic()
        if self._use_kept(job.device_id):
            pass  # its room was taken when the sender asked
        elif conn.room(now) > 0:
            conn.pacer.take(now)
        else:
            # No room kept for it (its word came after RESERVED_S, or with
            # none asked: a sender's orphan, the sweep) and its pacer or
            # window is full: it waits for room, read again then.
            self._look_later(job.id, asyncio.get_running_loop().call_later(
                max(0.0, conn.next_room_at(now) - now), self.arrived, job.device_id, job.id))
            return
        await hand(self.presence, conn, job.id, job_of(job))

    def _look_later(self, message_id: uuid.UUID, timer: asyncio.TimerHandle | None) -> None:
        """The job's next look: `timer`, in place of any before (None: none)."""
        old = self._later.pop(message_id, None)
        if old is not None:
            old.cancel()
        if timer is not None:
            self._later[message_id] = timer

    async def sweep(self, since: dt.datetime, before: dt.datetime) -> None:
        """Hand the jobs committed for our phones between `since` and
        `before` that none of our connections holds: their wake-up was lost."""
        for job in await store.stray_jobs(self.pool, self.node, since, before):
            conn = self.presence.get(job.device_id)
            if conn is None or job.id in conn.inflight or job.id in self._later:
                continue
            self.strays += 1
            log.info("job for a phone here handed by the sweep (its wake-up was lost)",
                     extra={"message_id": str(job.id), "device_id": str(job.device_id)})
            await self._hand(job)

    async def close(self) -> None:
        self._closing = True
        for handle in self._later.values():
            handle.cancel()
        self._later.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._jobs.close()
