"""The lifecycle's clocks (contract section 5), derived from PostgreSQL.

One loop, every `sweep_s`, asks the database what is due, so nothing is held
only in memory and a restarted broker picks up where the last one stopped:
- a `queued` or `dispatching` message whose `ttl` passed fails as `expired`
  (a connected phone holding it gets `cancel`);
- a job never acked whose device has stayed away longer than the reassign
  delay (or was deactivated) goes to another eligible device; if the first
  phone comes back holding it, it gets `cancel`, never a receipt. A job an
  SMS Gateway phone has listed is asked back instead (`handback`), and
  moves once the phone confirmed the cancel;
- a job another node committed for a phone held here whose wake-up was
  lost goes to that phone (broker/delivery/remote.py);
- a job in `sending`, or listed by an SMS Gateway phone, with no report
  within `no_report_after_s` fails as `no report`;
- idempotency rows older than 24 h (each holds a whole response) are
  deleted, at most `idempotency_purge_batch` a sweep (contract section 12);
  so are expired dashboard sessions.
Every move is a conditional UPDATE, so a phone's report that lands at the
same moment wins or loses cleanly, and several nodes may sweep at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid

from broker import store
from broker.clock import utcnow
from broker.cluster.peers import Peers
from broker.delivery.handoff import job_of, move
from broker.delivery.presence import Presence
from broker.delivery.remote import RemoteJobs
from broker.delivery.sending import IDEMPOTENCY_WINDOW
from broker.ops import metrics
from broker.settings import Settings
from broker.store import cluster as cluster_store
from broker.store import sessions
from protocol import lifecycle

log = logging.getLogger("smsdora.sweeper")


class Sweeper:
    def __init__(self, pool: store.Pool, presence: Presence, settings: Settings,
                 peers: Peers | None = None, remote: RemoteJobs | None = None) -> None:
        self.pool = pool
        self.presence = presence
        self.settings = settings
        self.peers = peers or Peers(pool, None, "")  # the other nodes: their phones
        self.remote = remote  # jobs they commit for our phones
        self.started_at = time.time()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_s)
            try:
                await self.sweep()
            except store.DATABASE_DOWN as err:
                log.warning("sweep skipped: database unavailable",
                            extra={"error": type(err).__name__})
            except Exception:
                log.exception("sweep failed")

    async def sweep(self) -> None:
        now = utcnow()
        await self._expire(now)
        await self._reassign(now)
        if self.remote is not None and self.peers.others:
            # Older than two sweeps: a wake-up that is only late is not lost.
            await self.remote.sweep(now - dt.timedelta(seconds=self.settings.reassign_after_s),
                                    now - dt.timedelta(seconds=2 * self.settings.sweep_s))
        no_report = now - dt.timedelta(seconds=self.settings.no_report_after_s)
        for statuses, column in (([lifecycle.SENDING], "updated_at"),
                                 ([lifecycle.DISPATCHING], "listed_at")):
            for stopped in await store.fail_due(self.pool, statuses, column, no_report,
                                                "no report"):
                metrics.TRANSITIONS.labels(lifecycle.FAILED).inc()
                log.info("no report: failed", extra={"message_id": str(stopped.id)})
                await self._stopped(stopped, "no report")
        await self._purge_idempotency(now)
        # Expired dashboard sessions (already refused by every read): one
        # bounded DELETE a sweep, as for idempotency rows.
        await sessions.purge_sessions(self.pool, self.settings.idempotency_purge_batch)

    async def _purge_idempotency(self, now: dt.datetime) -> None:
        """One bounded DELETE a sweep: a backlog (a broker that was down, an
        upgrade from before the purge) drains over several sweeps, never in
        one long statement."""
        purged = await store.purge_idempotency(self.pool, now - IDEMPOTENCY_WINDOW,
                                               self.settings.idempotency_purge_batch)
        if purged:
            log.debug("idempotency rows purged", extra={"rows": purged})

    async def _expire(self, now: dt.datetime) -> None:
        # A job an SMS Gateway phone listed carries its ttl as `validUntil`
        # and the app enforces it: its expiry waits for the phone's report
        # one reassign delay more, so that an SMS it sent is never `expired`.
        for stopped in await store.fail_due(
                self.pool, [lifecycle.QUEUED, lifecycle.DISPATCHING], "expires_at", now,
                "expired",
                listed_before=now - dt.timedelta(seconds=self.settings.reassign_after_s)):
            metrics.TRANSITIONS.labels(lifecycle.FAILED).inc()
            await self._stopped(stopped, "expired")

    async def _stopped(self, stopped: store.Stopped, reason: str) -> None:
        """A job failed while its phone may still hold it unsent: out of the
        phone's in-flight window (room for the next), and cancelled there."""
        if stopped.was != lifecycle.DISPATCHING or stopped.device_id is None:
            return
        conn = self.presence.get(stopped.device_id)
        if conn is not None:
            conn.inflight.discard(stopped.id)
            self.presence.room_freed(conn, time.monotonic())
            await conn.channel.cancel(str(stopped.id), reason)
        else:
            await self.peers.stop_job(stopped.device_id, stopped.id, reason)

    async def _reassign(self, now: dt.datetime) -> None:
        delay_s = self.settings.reassign_after_s
        wall = time.time()
        # Only accounts with a phone online here can take a job, so only their
        # jobs are read: jobs nobody can take never crowd out those that can.
        accounts = self.presence.online_accounts()
        if not accounts:
            return
        jobs = await store.unacked_jobs(self.pool, now - dt.timedelta(seconds=delay_s), accounts)
        # Phones held by another live node have their jobs too (CONTRACT
        # section 13): one query for every job's device not connected here.
        elsewhere: set[uuid.UUID] = set()
        if self.peers.others:
            away = {j.device_id for j in jobs if self.presence.get(j.device_id) is None}
            if away:
                elsewhere = set(await cluster_store.online_elsewhere(
                    self.pool, self.peers.node, list(away)))
        for job in jobs:
            if not job.released:
                if job.active and (self.presence.get(job.device_id) is not None
                                   or job.device_id in elsewhere):
                    continue  # online: its phone has the job
                if job.active and wall - self._away_since(job) < delay_s:
                    continue
            mono = time.monotonic()
            picked = self.presence.pick_other(job.account_id, mono, job.device_id)
            if picked is None or not picked[1]:
                continue  # nobody else with room now: the next sweep tries again
            conn = picked[0]
            if job.listed and not job.released:
                # The phone may have sent it: ask for it back, and move it
                # only once the phone confirms it did not (CONTRACT section 8).
                if job.active and await store.request_handback(self.pool, job.id,
                                                               job.device_id):
                    log.info("job asked back", extra={"message_id": str(job.id),
                                                      "from_device": str(job.device_id)})
                continue
            await move(self.pool, self.presence, conn, job.id, job.device_id,
                       job_of(job))

    def _away_since(self, job: store.Unacked) -> float:
        """Since when the device has been away, as far as anyone can tell: its
        disconnect here, else its last-seen, but never before this process
        started (a phone cannot be blamed for the broker's own restart)."""
        gone = self.presence.gone_at(job.device_id)
        if gone is not None:
            return gone
        seen = job.last_seen_at.timestamp() if job.last_seen_at else 0.0
        return max(seen, self.started_at)
