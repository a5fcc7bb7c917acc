"""The delivery engine's one door for transports and the runtime: sends,
redelivery when a phone connects, and the answers to a phone's reports.

It speaks to phones only through `DeviceChannel` (broker/delivery/channel.py);
what the bytes look like is the transport's business.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from prometheus_client import Counter

from broker import store
from broker.cluster.peers import Peers
from broker.delivery import reports
from broker.delivery.channel import Answer, Cancel, CloseReason, Receipt, Refusal
from broker.delivery.handoff import hand, job_of
from broker.delivery.presence import Connection, Presence
from broker.delivery.queue import Queue
from broker.delivery.remote import RemoteJobs
from broker.delivery.sending import Sender
from broker.delivery.wake import Wake
from broker.lookups import Coalescer
from broker.ops import metrics
from protocol import lifecycle


class Dispatcher:
    def __init__(self, pool: store.Pool, presence: Presence, max_queued: int = 10_000,
                 wake: Wake | None = None, peers: Peers | None = None) -> None:
        self.pool = pool
        self.presence = presence
        self.wake = wake or Wake()
        self.peers = peers or Peers(pool, None, "")
        self.queue = Queue(pool, presence, max_queued)
        # Jobs other nodes committed for our phones (CONTRACT section 13).
        self.remote = RemoteJobs(pool, presence, self.peers.node)
        self.sender = Sender(pool, presence, self.queue, self.wake, self.peers)
        self.reports = reports.ReportWriter(pool, self._reports_written)
        redelivered = sorted(lifecycle.REDELIVERED)

        async def fetch_open_jobs(ids: list[uuid.UUID]) -> dict[uuid.UUID, store.OpenJobs]:
            return await store.open_jobs(pool, ids, redelivered)

        # Phones' connects: one query for the phones of a reconnect storm.
        self.open_jobs: Coalescer[uuid.UUID, store.OpenJobs] = Coalescer(fetch_open_jobs)
        # The send path and the queue's kick, reached through this door
        # without a forwarding call of their own (the send is the hot path).
        self.send = self.sender.send
        self.kick = self.queue.kick

    def _reports_written(self, written: list[reports.Report]) -> None:
        """Their history rows are committed, and so their events: tell the
        webhook sender (for the accounts that have an endpoint)."""
        for r in written:
            conn = self.presence.get(r.device_id)
            if conn is not None:
                self.wake.poke(conn.account_id)

    # --- devices ------------------------------------------------------------

    async def on_connect(self, conn: Connection, pending: list[str]) -> None:
        """Give a (re)connected phone every job of its own that is not final,
        cancel what it holds that is no longer its own, and drain the queue."""
        found = await self.open_jobs.get(conn.device_id)
        if found is None or not found.active:
            # Deactivated between the token check and the hello: the notice
            # found no connection to close, so close it here.
            self.presence.unregister(conn)
            await conn.channel.close(CloseReason.DEACTIVATED)
            return
        jobs = found.jobs
        own = {str(j.id) for j in jobs}
        for job in jobs:
            if job.id not in conn.inflight:  # a send may have handed it here already
                await hand(self.presence, conn, job.id, job_of(job))
        foreign = [held for held in pending if held not in own]
        if foreign:
            for held, reason in (await self._cancel_reasons(conn, foreign)).items():
                if reason is not None:
                    await conn.channel.cancel(held, reason)
        self.queue.kick_unless_empty(conn.account_id)

    async def _cancel_reasons(self, conn: Connection,
                              held: list[str]) -> dict[str, str | None]:
        """Why each job a phone holds is no longer its own to send (None: it
        is `sent` and the phone may still report its delivery: no cancel)."""
        ids = {h: parse_id(h) for h in held}
        known = {str(j.id): j for j in await store.held_jobs(
            self.pool, conn.account_id, [i for i in ids.values() if i is not None])}
        reasons: dict[str, str | None] = {}
        for h in held:
            job = known.get(str(ids[h])) if ids[h] is not None else None
            if job is None:
                reasons[h] = "unknown"
            elif job.device_id != conn.device_id:
                reasons[h] = "reassigned"
            elif job.status == lifecycle.FAILED:
                reasons[h] = job.error or "failed"
            elif job.status == lifecycle.SENT:
                reasons[h] = None  # the delivery report may still come
            else:
                reasons[h] = "done"  # delivered: nothing left to do for it
        return reasons

    # --- reports ------------------------------------------------------------

    def report(self, device_id: uuid.UUID, message_id: str, report: lifecycle.Report,
               error: str | None = None) -> asyncio.Future[reports.Result]:
        """Queue a phone's report for the next group commit; the future is
        done once it is committed (or refused): then `answer` says what to
        tell the phone."""
        parsed = parse_id(message_id)
        if parsed is None:
            # Refused without the database, but answered in its turn, after
            # the phone's earlier reports.
            refused: asyncio.Future[reports.Result] = \
                asyncio.get_running_loop().create_future()
            refused.set_result(reports.Result(lifecycle.NOT_YOURS, None))
            return refused
        return self.reports.enqueue(reports.Report(device_id, parsed, report, error))

    def answer(self, conn: Connection | None, message_id: str,
               result: reports.Result) -> Answer:
        """After the report's commit: what to answer the phone with (`conn`:
        its connection, None for an SMS Gateway app reporting with no
        stream open)."""
        outcome = result.outcome
        parsed = parse_id(message_id)
        if parsed is not None and conn is not None:
            was_full = 0 < conn.window <= len(conn.inflight)
            conn.inflight.discard(parsed)  # answered: no longer in flight
            if was_full:
                self.presence.room_freed(conn, time.monotonic())
                self.kick(conn.account_id)  # room again: queued jobs may go now
        if outcome.kind is lifecycle.Kind.MOVE:
            _TRANSITIONS[outcome.new_status].inc()
        if outcome.kind is lifecycle.Kind.REFUSE:
            return Refusal(outcome.code or lifecycle.REFUSED_FINAL)
        if outcome.kind is lifecycle.Kind.CANCEL:
            return Cancel(result.error or "failed")
        assert outcome.receipt is not None
        return _RECEIPTS[outcome.receipt]

    async def close(self) -> None:
        await self.queue.close()
        await self.remote.close()
        await self.sender.close()
        await self.reports.close()
        await self.open_jobs.close()


# Built once: a receipt per status (the answer to almost every report), and
# the transition counter's child for each.
_RECEIPTS: dict[str, Receipt] = {status: Receipt(status) for status in lifecycle.STATUSES}
_TRANSITIONS: dict[str | None, Counter] = {
    status: metrics.TRANSITIONS.labels(status) for status in lifecycle.STATUSES}


def parse_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None
