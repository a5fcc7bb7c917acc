"""Moves jobs to phones: the send path, queue drains, redelivery on connect,
and the phone's reports.

A job has one owner device at a time (`messages.device_id`) and every state
is in PostgreSQL, so whatever this process holds in memory (timers, presence)
can be rebuilt from the database after a restart.
"""

from __future__ import annotations

import asyncio
import functools
import datetime as dt
import hashlib
import logging
import time
import uuid
from typing import Any, NamedTuple

import asyncpg

from broker import store
from broker.ops import metrics
from broker.delivery import reports
from broker.lookups import Coalescer
from broker.errors import Conflict, Forbidden, KeyChanged, NoEligibleDevice, Unavailable
from broker.delivery.presence import Connection, Presence
from protocol import frames, lifecycle
from protocol.api import DeviceRef, MessageData, SendResponse, encoder as api_encoder

log = logging.getLogger("smsdora.dispatch")
IDEMPOTENCY_WINDOW = dt.timedelta(hours=24)
_PICK_ATTEMPTS = 4
_QUEUE_FULL_RETRY_S = 30
# A drain that found an account's queue empty is trusted this long by the
# phones connecting after it (a reconnect storm would otherwise run one drain
# query per phone). Jobs queued here meanwhile end the trust at once; only
# another broker process's could wait this long for a drain.
QUEUE_EMPTY_TRUST_S = 5.0
CLOSE_DEACTIVATED = 1008


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class _Month:
    """The current month's start, recomputed only when the month turns (the
    send path asks on every send)."""

    __slots__ = ("start", "next")

    def __init__(self) -> None:
        self.start = self.next = dt.datetime.min.replace(tzinfo=dt.timezone.utc)

    def of(self, now: dt.datetime) -> dt.datetime:
        if not self.start <= now < self.next:
            self.start = _month_start(now)
            self.next = (self.start + dt.timedelta(days=32)).replace(day=1)
        return self.start


def send_frame(job: store.Job) -> bytes:
    return frames.encode(frames.Send(id=str(job.id), recipient=job.recipient, message=job.body))


async def hand(presence: Presence, conn: Connection, message_id: uuid.UUID,
               frame: bytes) -> None:
    """Write a job to a phone; it is in flight until the phone answers.

    If the phone reconnected meanwhile (its new connection read its open
    jobs before this one was committed), the job goes to the new connection
    too: the phone keys its work by id, so a repeat costs nothing, and
    without it the job would wait for the next reconnect."""
    conn.inflight.add(message_id)
    if not await conn.socket.send_frame(frame):
        conn.inflight.discard(message_id)
        presence.room_freed(conn, time.monotonic())
    current = presence.get(conn.device_id)
    if current is not None and current is not conn and message_id not in current.inflight:
        current.inflight.add(message_id)
        if not await current.socket.send_frame(frame):
            current.inflight.discard(message_id)


class Dispatcher:
    def __init__(self, pool: asyncpg.Pool, presence: Presence,
                 max_queued: int = 10_000) -> None:
        self.pool = pool
        self.presence = presence
        self.max_queued = max_queued
        self.reports = reports.ReportWriter(pool)
        self._usage: dict[uuid.UUID, tuple[dt.datetime, int]] = {}
        self._month = _Month()
        self._drains: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wakeups: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self._empty_at: dict[uuid.UUID, float] = {}  # account -> when a drain found none
        self._again: set[uuid.UUID] = set()  # accounts kicked while their drain ran
        self._closing = False
        redelivered = sorted(lifecycle.REDELIVERED)

        async def fetch_open_jobs(ids: list[uuid.UUID]) -> dict[uuid.UUID, store.OpenJobs]:
            return await store.open_jobs(pool, ids, redelivered)

        self.open_jobs: Coalescer[uuid.UUID, store.OpenJobs] = Coalescer(fetch_open_jobs)

    # --- the send path ------------------------------------------------------

    async def _check_quota(self, account_id: uuid.UUID, monthly: int, now: dt.datetime) -> None:
        """Monthly plan volume, counted in memory after one count per month.
        Per process: several nodes may together overshoot by what is in flight."""
        month = self._month.of(now)
        cached = self._usage.get(account_id)
        if cached is None or cached[0] != month:
            count = await store.messages_this_month(self.pool, account_id, month)
            cached = self._usage[account_id] = (month, count)
        if cached[1] >= monthly:
            raise Forbidden("Monthly message quota exceeded")

    def _count(self, account_id: uuid.UUID) -> None:
        month, n = self._usage.get(account_id, (self._month.of(utcnow()), 0))
        self._usage[account_id] = (month, n + 1)

    async def send(self, account_id: uuid.UUID, monthly: int, recipient: str, body: str,
                   ttl_s: int | None, idempotency_key: str | None, raw_body: bytes,
                   key_id: uuid.UUID | None = None, key_prefix: str | None = None) -> bytes:
        """Accept one message; returns the 201 body. The row is committed and
        the job frame written to the phone's socket before this returns."""
        now = utcnow()
        job = _NewJob(uuid.uuid4(), account_id, recipient, body,
                      now + dt.timedelta(seconds=ttl_s) if ttl_s else None, now, key_id,
                      key_prefix)
        accepted: _Accepted | None = None
        if idempotency_key is None:
            await self._check_quota(account_id, monthly, now)
            accepted = await self._accept(self.pool, job)
        else:
            request_hash = hashlib.sha256(raw_body).digest()
            replay = await self._replay(account_id, idempotency_key, request_hash, now)
            if replay is not None:
                return replay
            await self._check_quota(account_id, monthly, now)
            # Claim the key first, in the message's own transaction: a twin
            # request blocks on the key until we commit and then replays our
            # response, so only one of them ever picks a device.
            try:
                async with self.pool.acquire() as db, db.transaction():
                    if not await store.claim_idempotency(
                            db, account_id, idempotency_key, request_hash, job.id, b"",
                            now - IDEMPOTENCY_WINDOW):
                        raise _LostRace()
                    accepted = await self._accept(db, job)
                    await store.set_idempotent_response(db, account_id, idempotency_key,
                                                        accepted.response)
            except _LostRace:
                replay = await self._replay(account_id, idempotency_key, request_hash, now)
                assert replay is not None, "idempotency row vanished under us"
                return replay
            except BaseException:
                if accepted is not None and accepted.has_room:  # rolled back: nothing sent
                    self._give_back(accepted.conn, accepted.mono)
                raise
        assert accepted is not None
        await self._deliver(job, accepted)
        return accepted.response

    def _give_back(self, conn: Connection, mono: float) -> None:
        """Undo a pacer take whose job never went out."""
        conn.pacer.give_back(mono)
        self.presence.room_freed(conn, time.monotonic())

    async def _accept(self, db: Any, job: _NewJob) -> _Accepted:
        """Pick the device and write the message (not yet the frame)."""
        # A pick can name a device that was deactivated a moment ago (presence
        # hears of it by NOTIFY, PostgreSQL knows at once): drop it, pick again.
        for _ in range(_PICK_ATTEMPTS):
            mono = time.monotonic()
            picked = self.presence.pick(job.account_id, mono)
            if picked is None:
                break
            conn, has_room = picked
            status = lifecycle.DISPATCHING if has_room else lifecycle.QUEUED
            if has_room:
                conn.pacer.take(mono)  # before the await: a concurrent send sees it
            else:
                self._empty_at.pop(job.account_id, None)  # a job is queued from now
                if await store.queued_count(db, job.account_id) >= self.max_queued:
                    # A bounded queue: past it the client is told to come back,
                    # rather than the backlog growing without end.
                    metrics.SENDS.labels("queue_full").inc()
                    raise Unavailable("Too many queued messages",
                                      headers={"Retry-After": str(_QUEUE_FULL_RETRY_S)})
            try:
                written = await store.insert_message(
                    db, job.id, job.account_id, conn.device_id, job.recipient, job.body, status,
                    job.expires_at, job.created_at, job.key_id, job.key_prefix)
            except BaseException:
                if has_room:
                    self._give_back(conn, mono)
                raise
            if written == store.KEY_GONE:
                if has_room:
                    self._give_back(conn, mono)
                raise KeyChanged()
            if written == store.WRITTEN:
                response = api_encoder.encode(SendResponse(
                    statusCode=201, message="SMS queued for delivery",
                    data=MessageData(id=str(job.id), recipient=job.recipient, message=job.body,
                                     status=status, device=DeviceRef(id=str(conn.device_id),
                                                                     deviceName=conn.name)),
                ))
                return _Accepted(conn, has_room, mono, response)
            if has_room:
                self._give_back(conn, mono)  # nothing went to the phone
            self.presence.unregister(conn)
            await conn.socket.close(CLOSE_DEACTIVATED, "device deactivated")
        metrics.SENDS.labels("no_device").inc()
        raise NoEligibleDevice()

    async def _deliver(self, job: _NewJob, accepted: _Accepted) -> None:
        """After the commit: the job frame to the phone, or a wake-up for the queue."""
        self._count(job.account_id)
        metrics.TRANSITIONS.labels(lifecycle.QUEUED).inc()
        if accepted.has_room:
            metrics.TRANSITIONS.labels(lifecycle.DISPATCHING).inc()
            await hand(self.presence, accepted.conn, job.id, frames.encode(
                frames.Send(id=str(job.id), recipient=job.recipient, message=job.body)))
            metrics.DISPATCH_LATENCY.observe(time.monotonic() - accepted.mono)
            metrics.SENDS.labels("dispatching").inc()
        else:
            # Again after the commit: a drain that ran while this row was
            # uncommitted found the queue empty and may have said so since.
            self._empty_at.pop(job.account_id, None)
            metrics.SENDS.labels("queued").inc()
            self.wake_at(job.account_id, self.presence.next_room_at(job.account_id,
                                                                    accepted.mono))

    async def _replay(self, account_id: uuid.UUID, key: str, request_hash: bytes,
                      now: dt.datetime) -> bytes | None:
        found = await store.idempotent_response(self.pool, account_id, key,
                                                now - IDEMPOTENCY_WINDOW)
        if found is None:
            return None
        if found.request_hash != request_hash:
            raise Conflict("Idempotency-Key was already used with a different request body")
        metrics.SENDS.labels("replayed").inc()
        return found.response

    # --- queued jobs --------------------------------------------------------

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
                await hand(self.presence, conn, job.id, send_frame(job))
            if len(jobs) < batch:
                self._empty_at[account_id] = time.monotonic()
                return  # the queue is empty

    # --- devices ------------------------------------------------------------

    async def on_connect(self, conn: Connection, pending: list[str]) -> None:
        """Give a (re)connected phone every job of its own that is not final,
        cancel what it holds that is no longer its own, and drain the queue."""
        found = await self.open_jobs.get(conn.device_id)
        if found is None or not found.active:
            # Deactivated between the token check and the hello: the notice
            # found no connection to close, so close it here.
            self.presence.unregister(conn)
            await conn.socket.close(CLOSE_DEACTIVATED, "device deactivated")
            return
        jobs = found.jobs
        own = {str(j.id) for j in jobs}
        for job in jobs:
            if job.id not in conn.inflight:  # a send may have handed it here already
                await hand(self.presence, conn, job.id, send_frame(job))
        foreign = [held for held in pending if held not in own]
        if foreign:
            for held, reason in (await self._cancel_reasons(conn, foreign)).items():
                if reason is not None:
                    await conn.socket.send_frame(frames.encode(
                        frames.Cancel(id=held, reason=reason)))
        empty_at = self._empty_at.get(conn.account_id)
        if empty_at is None or time.monotonic() - empty_at > QUEUE_EMPTY_TRUST_S:
            self.kick(conn.account_id)

    async def _cancel_reasons(self, conn: Connection,
                              held: list[str]) -> dict[str, str | None]:
        """Why each job a phone holds is no longer its own to send (None: it
        is `sent` and the phone may still report its delivery: no cancel)."""
        ids = {h: _parse_uuid(h) for h in held}
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

    def report(self, conn: Connection,
               frame: frames.Ack | frames.Status) -> asyncio.Future[reports.Result]:
        """Queue a phone's report for the next group commit; the future is
        done once it is committed (or refused): then `answer` says what to
        send back."""
        message_id = _parse_uuid(frame.id)
        if message_id is None:
            # Refused without the database, but answered in its turn, after
            # the phone's earlier reports.
            refused: asyncio.Future[reports.Result] = \
                asyncio.get_running_loop().create_future()
            refused.set_result(reports.Result(_NOT_A_JOB, None))
            return refused
        report = "ack" if isinstance(frame, frames.Ack) else frame.status
        error = frame.error if isinstance(frame, frames.Status) else None
        return self.reports.enqueue(reports.Report(conn.device_id, message_id, report, error))

    def answer(self, conn: Connection, frame: frames.Ack | frames.Status,
               result: reports.Result) -> bytes:
        """After the report's commit: what to answer the phone with."""
        outcome = result.outcome
        message_id = _parse_uuid(frame.id)
        if message_id is not None:
            was_full = 0 < conn.window <= len(conn.inflight)
            conn.inflight.discard(message_id)  # answered: no longer in flight
            if was_full:
                self.presence.room_freed(conn, time.monotonic())
                self.kick(conn.account_id)  # room again: queued jobs may go now
        if outcome.kind is lifecycle.Kind.MOVE:
            metrics.TRANSITIONS.labels(outcome.new_status).inc()
        if outcome.kind is lifecycle.Kind.REFUSE:
            return _refuse(frame.id, outcome.code or frames.REFUSED)
        if outcome.kind is lifecycle.Kind.CANCEL:
            return frames.encode(frames.Cancel(id=frame.id, reason=result.error or "failed"))
        assert outcome.receipt is not None
        return frames.encode(frames.Receipt(id=frame.id, status=outcome.receipt))

    async def close(self) -> None:
        self._closing = True
        await self.reports.close()
        await self.open_jobs.close()
        for handle in self._wakeups.values():
            handle.cancel()
        self._wakeups.clear()
        tasks = list(self._drains.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _NewJob(NamedTuple):
    id: uuid.UUID
    account_id: uuid.UUID
    recipient: str
    body: str
    expires_at: dt.datetime | None
    created_at: dt.datetime
    key_id: uuid.UUID | None  # the API key, checked again in the INSERT itself
    key_prefix: str | None


class _Accepted(NamedTuple):
    conn: Connection
    has_room: bool
    mono: float
    response: bytes


class _LostRace(Exception):
    """A concurrent request with the same Idempotency-Key committed first."""


_NOT_A_JOB = lifecycle.Outcome(lifecycle.Kind.REFUSE, code=frames.NOT_YOURS)

_REFUSAL_DETAIL = {
    frames.NOT_YOURS: "no such job for this device",
    frames.NOT_ACKED: "job was not acked: ack it and wait for the receipt before sending",
    frames.REFUSED: "report not allowed in the job's current status",
}


def _refuse(message_id: str, code: str) -> bytes:
    return frames.encode(frames.Error(code=code, detail=_REFUSAL_DETAIL.get(code, code),
                                      id=message_id))


def _parse_uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None
