"""An account's queued jobs: drained to the freshest phone with room, as
soon as one has room (contract section 3: "the message waits as queued in
PostgreSQL and goes out as soon as one has room")."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

from broker import store
from broker.delivery.handoff import hand, job_of
from broker.delivery.presence import Presence
from broker.errors import Unavailable
from broker.ops import metrics
from protocol import lifecycle

log = logging.getLogger("smsdora.queue")
# A drain that found an account's queue empty is trusted this long by the
# phones connecting after it (a reconnect storm would otherwise run one drain
# query per phone). Jobs queued here meanwhile end the trust at once; only
# another broker process's could wait this long for a drain.
QUEUE_EMPTY_TRUST_S = 5.0
_QUEUE_FULL_RETRY_S = 30
# An account's count of queued jobs is trusted this long (each queued send
# counted them: the whole backlog, up to max_queued rows, every time).
_QUEUE_COUNT_TRUST_S = 1.0
_QUEUE_COUNTS_KEPT = 10_000  # accounts; past it every count is forgotten at once
_FULL = metrics.SENDS.labels("queue_full")


class Queue:
    def __init__(self, pool: store.Db, presence: Presence, max_queued: int = 10_000) -> None:
        self.pool = pool
        self.presence = presence
        self.max_queued = max_queued
        # Accounts' queued jobs, as last counted (and when), plus ours since.
        self._counted: dict[uuid.UUID, tuple[int, float]] = {}
        self._drains: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wakeups: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self._empty_at: dict[uuid.UUID, float] = {}  # account -> when a drain found none
        self._again: set[uuid.UUID] = set()  # accounts kicked while their drain ran
        self._closing = False

    async def admit(self, db: store.Db, account_id: uuid.UUID) -> None:
        """A job of the account is queued from now, unless its queue is full:
        a bounded queue, past which the client is told to come back rather
        than the backlog growing without end (503). The count is
        PostgreSQL's, at most _QUEUE_COUNT_TRUST_S old, plus what this node
        queued since: it only overstates (drains lower it), so it is counted
        again before a refusal; other nodes' jobs of that moment it misses."""
        self.filled(account_id)
        now = time.monotonic()
        seen = self._counted.get(account_id)
        if seen is None or now - seen[1] > _QUEUE_COUNT_TRUST_S or seen[0] >= self.max_queued:
            if len(self._counted) >= _QUEUE_COUNTS_KEPT:
                self._counted.clear()
            seen = (await store.queued_count(db, account_id, self.max_queued), now)
        if seen[0] >= self.max_queued:
            _FULL.inc()
            raise Unavailable("Too many queued messages",
                              headers={"Retry-After": str(_QUEUE_FULL_RETRY_S)})
        self._counted[account_id] = (seen[0] + 1, seen[1])  # this one, if written

    def filled(self, account_id: uuid.UUID) -> None:
        """A job of the account is (about to be) queued: a drain's "empty"
        no longer holds."""
        self._empty_at.pop(account_id, None)

    def kick_unless_empty(self, account_id: uuid.UUID) -> None:
        """A phone connected: drain, unless a drain just found nothing."""
        empty_at = self._empty_at.get(account_id)
        if empty_at is None or time.monotonic() - empty_at > QUEUE_EMPTY_TRUST_S:
            self.kick(account_id)

    def wake_at(self, account_id: uuid.UUID, at_mono: float | None) -> None:
        """Drain the account's queue when a device has room (monotonic time)."""
        if at_mono is None or self._closing:
            return
        old = self._wakeups.pop(account_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at_mono - time.monotonic())
        self._wakeups[account_id] = loop.call_later(delay, self.kick, account_id)

    def kick(self, account_id: uuid.UUID) -> None:
        """Start a drain of the account's queue unless one is running."""
        self._wakeups.pop(account_id, None)
        if self._closing:
            return
        running = self._drains.get(account_id)
        if running is not None and not running.done():
            # It may have read the queue before what prompted this kick
            # (a job committed, a phone with room): once more when it ends.
            self._again.add(account_id)
            return
        task = asyncio.get_running_loop().create_task(self._drain(account_id))
        self._drains[account_id] = task
        task.add_done_callback(functools.partial(self._drain_done, account_id))

    def _drain_done(self, account_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        if self._drains.get(account_id) is task:
            del self._drains[account_id]
        if account_id in self._again and not task.cancelled():
            self._again.discard(account_id)
            self.kick(account_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("queue drain failed: retrying in 1 s", exc_info=task.exception(),
                      extra={"account_id": str(account_id)})
            self.wake_at(account_id, time.monotonic() + 1.0)

    async def _drain(self, account_id: uuid.UUID) -> None:
        """Queued jobs to the freshest device with room, as for new sends,
        until the queue is empty or every device is at its rate."""
        while True:
            now = time.monotonic()
            picked = self.presence.pick(account_id, now)
            if picked is None:
                return  # the next device to connect kicks the drain again
            conn, has_room = picked
            if not has_room:
                # Every device is at its rate: come back when the first has room.
                self.wake_at(account_id, conn.next_room_at(now))
                return
            batch = min(conn.room(now), 500)
            jobs = await store.claim_queued(self.pool, account_id, conn.device_id, batch)
            for job in jobs:
                conn.pacer.take(now)
                metrics.TRANSITIONS.labels(lifecycle.DISPATCHING).inc()
                await hand(self.presence, conn, job.id, job_of(job))
            if len(jobs) < batch:
                self._empty_at[account_id] = time.monotonic()
                return  # the queue is empty

    async def close(self) -> None:
        self._closing = True
        for handle in self._wakeups.values():
            handle.cancel()
        self._wakeups.clear()
        tasks = list(self._drains.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
