"""The sender: delivers the outbox (migration 0006) to the customers'
endpoints, at least once, in order per message (CONTRACT section 9).

One loop per node claims due rows (`FOR UPDATE SKIP LOCKED`, so nodes
share the work and never take the same row), at most
SMSDORA_WEBHOOK_CONCURRENCY attempts under way and at most
SMSDORA_WEBHOOK_PER_ENDPOINT of them to one endpoint, so a slow endpoint
holds only its own share: the others' events go on. Each attempt is one
POST, signed anew (Standard Webhooks), with a total deadline of
SMSDORA_WEBHOOK_TIMEOUT; redirects are not followed. The outcomes of
attempts that end together are recorded in one transaction. The loop
looks when a code path pokes it (`Wake`) and at least every
SMSDORA_WEBHOOK_POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from broker import store
from broker.clock import iso, utcnow
from broker.delivery.wake import Wake
from broker.ops import metrics
from broker.settings import Settings
from broker.store import webhooks as outbox
from broker.webhooks import signing
from broker.webhooks.client import Client, RequestFailed

log = logging.getLogger("smsdora.webhooks")

USER_AGENT = "smsdora-webhooks/1"
MAX_RETRY_AFTER_S = 24 * 3600.0
JITTER = 0.1  # each retry delay moved by up to ±10 %, so retries do not come in waves
ACCOUNTS_REFRESH_S = 5.0
PURGE_EVERY_S = 600.0
PURGE_BATCH = 5000
MIN_STEP_S = 0.005
MAX_ANSWER_BYTES = 64 * 1024  # of an answer's body, read and dropped

# The body's `data` in the order the API writes the same object (jsonb
# keeps its keys sorted by length): message events as GET /messages/{id},
# inbound as GET /inbox, device events as GET /devices.
_ORDERS: dict[str, tuple[str, ...]] = {
    "message": ("id", "recipient", "message", "status", "device", "error", "createdAt"),
    "message.received": ("id", "sender", "message", "receivedAt", "createdAt", "device"),
    "device": ("id", "deviceName", "online", "lastSeen", "active", "sendRate", "health",
               "appVersion", "transport"),
}


class Envelope(msgspec.Struct):
    type: str
    timestamp: str
    data: Any


_encoder = msgspec.json.Encoder()


def body_of(event_type: str, occurred_at: dt.datetime, data: Any) -> str:
    """The POST body of an event: the same bytes on every attempt."""
    order = _ORDERS.get(event_type) or _ORDERS.get(event_type.split(".")[0])
    if order is not None and isinstance(data, dict):
        data = {**{k: data[k] for k in order if k in data}, **data}
    return _encoder.encode(Envelope(event_type, iso(occurred_at) or "", data)).decode()


def retry_after_s(value: str | None, now: dt.datetime) -> float | None:
    """Retry-After as seconds from now (RFC 9110: delay-seconds or an
    HTTP-date), at most a day; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return min(max(0.0, (at - now).total_seconds()), MAX_RETRY_AFTER_S)


def next_attempt(attempts: int, schedule: tuple[float, ...], now: dt.datetime,
                 retry_after: float | None, rng: random.Random) -> dt.datetime | None:
    """When the next attempt is due after `attempts` failed ones of this
    round, or None: the schedule is spent, the event has finally failed."""
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1] * (1 + rng.uniform(-JITTER, JITTER))
    if retry_after is not None:
        delay = retry_after
    return now + dt.timedelta(seconds=delay)


class Sender:
    def __init__(self, pool: store.Pool, settings: Settings, wake: Wake) -> None:
        self.pool = pool
        self.settings = settings
        self.wake = wake
        self.rng = random.Random()
        self.client = Client(settings.webhook_allow_private, MAX_ANSWER_BYTES, USER_AGENT)
        self.lease_s = settings.webhook_timeout_s + 30.0
        self.busy: dict[uuid.UUID, int] = {}  # attempts under way per endpoint
        self.running: dict[int, asyncio.Task[None]] = {}  # by event seq
        self._outcomes: list[outbox.Outcome] = []
        self._recording: asyncio.Task[None] | None = None
        self._accounts_at = 0.0
        self._full_at = 0.0
        self._hot_endpoints: set[uuid.UUID] = set()
        self._purged_at = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except store.DATABASE_DOWN as err:
                log.warning("webhook claim failed", extra={"error": type(err).__name__})
            except Exception:
                log.exception("webhook sender step failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.event.wait(), self.settings.webhook_poll_s)
            # Pokes that come meanwhile join this step: under load a claim
            # at most every MIN_STEP_S, not one per send.
            await asyncio.sleep(MIN_STEP_S)
            self.wake.event.clear()

    async def step(self) -> None:
        now = time.monotonic()
        if now - self._accounts_at >= ACCOUNTS_REFRESH_S:
            await self.refresh_accounts()
        if now - self._purged_at >= PURGE_EVERY_S:
            self._purged_at = now
            await outbox.purge_done(self.pool, self.settings.webhook_keep_days, PURGE_BATCH)
        room = self.settings.webhook_concurrency - len(self.running)
        if room <= 0:
            return  # what was poked stays poked: the next step looks
        # Every endpoint once a poll interval (other nodes' events, retries
        # come due, anything missed); in between only what was poked: the
        # endpoints of accounts that committed events, and those whose
        # attempts ended (the next events of their messages).
        full = now - self._full_at >= self.settings.webhook_poll_s
        accounts, endpoints = list(self.wake.hot), list(self._hot_endpoints)
        if not full and not accounts and not endpoints:
            return
        self.wake.hot.clear()
        self._hot_endpoints.clear()
        if full:
            self._full_at = now
        try:
            claimed = await outbox.claim_due(
                self.pool, self.settings.node, self.busy, self.settings.webhook_per_endpoint, room, self.lease_s,
                None if full else endpoints, accounts)
        except BaseException:
            self.wake.hot.update(accounts)
            self._hot_endpoints.update(endpoints)
            raise
        if len(claimed) >= room and not full:  # more may be due there: look again
            self.wake.hot.update(accounts)
            self._hot_endpoints.update(endpoints)
        for c in claimed:
            self.busy[c.webhook_id] = self.busy.get(c.webhook_id, 0) + 1
            task = asyncio.get_running_loop().create_task(self._attempt(c))
            self.running[c.seq] = task

    async def refresh_accounts(self) -> None:
        self._accounts_at = time.monotonic()
        self.wake.accounts = await outbox.enabled_accounts(self.pool)

    async def _attempt(self, c: outbox.Claimed) -> None:
        started = time.monotonic()
        outcome = await self.attempt(c)
        metrics.WEBHOOK_LATENCY.observe(time.monotonic() - started)
        metrics.WEBHOOK_ATTEMPTS.labels("delivered" if outcome.ok else "failed").inc()
        self._outcomes.append(outcome)
        if self._recording is None:
            self._recording = asyncio.get_running_loop().create_task(self._record())

    async def attempt(self, c: outbox.Claimed) -> outbox.Outcome:
        """One POST of a claimed event, and what it got."""
        body = body_of(c.type, c.occurred_at, c.data)
        at = utcnow()
        secrets = [c.secret] + ([c.previous_secret] if c.previous_secret else [])
        headers = {"content-type": "application/json",
                   **signing.headers(str(c.id), at, body, secrets)}
        code: int | None = None
        error: str | None = None
        answer_headers: Mapping[str, str] = {}
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                answer = await self.client.post(c.url, body.encode(), headers)
            code, answer_headers = answer.status, answer.headers
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s"
        except RequestFailed as err:
            error = str(err)
        ok = code is not None and 200 <= code < 300
        if code is not None and not ok:
            error = ("redirects are not followed" if 300 <= code < 400
                     else f"answered {code}")
        now = utcnow()
        next_at = None if ok else next_attempt(
            c.attempts, self.settings.webhook_retries_s, now,
            retry_after_s(answer_headers.get("retry-after"), now), self.rng)
        return outbox.Outcome(seq=c.seq, webhook_id=c.webhook_id, ok=ok, status_code=code,
                              error=error, at=at, next_at=next_at, claimed=c.attempts,
                              gone=code == 410)

    async def _record(self) -> None:
        """The outcomes of every attempt that ended meanwhile, in one
        transaction; then their endpoints have room again, and later events
        of their messages are due: look again."""
        try:
            await asyncio.sleep(0)  # attempts ending in the same tick share the commit
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                for delay in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
                    await asyncio.sleep(delay)
                    try:
                        async with self.pool.acquire() as db:
                            disabled = await outbox.record(db, batch,
                                                           self.settings.webhook_disable_after_s)
                        break
                    except store.DATABASE_DOWN as err:
                        log.warning("webhook outcomes not recorded yet",
                                    extra={"error": type(err).__name__})
                    except Exception:
                        log.exception("webhook outcomes not recorded: leases will end")
                        disabled = []
                        break
                else:
                    # The rows' leases end and another attempt follows
                    # (at least once): nothing is lost.
                    log.error("webhook outcomes dropped", extra={"count": len(batch)})
                    disabled = []
                for o in batch:
                    self._done(o.seq, o.webhook_id)
                    self._hot_endpoints.add(o.webhook_id)
                for webhook_id in disabled:
                    metrics.WEBHOOKS_DISABLED.inc()
                    log.warning("webhook disabled", extra={"webhook": str(webhook_id)})
                if disabled:
                    await self.refresh_accounts()
                self.wake.event.set()
        finally:
            self._recording = None
            if self._outcomes:  # appended after the loop looked
                self._recording = asyncio.get_running_loop().create_task(self._record())

    def _done(self, seq: int, webhook_id: uuid.UUID) -> None:
        self.running.pop(seq, None)
        left = self.busy.get(webhook_id, 0) - 1
        if left > 0:
            self.busy[webhook_id] = left
        else:
            self.busy.pop(webhook_id, None)

    async def close(self) -> None:
        """Attempts under way are cut short; their rows are due again at
        once, for this node's successor or another node (at least once)."""
        cut = [seq for seq, task in self.running.items() if not task.done()]
        for task in self.running.values():
            task.cancel()
        for task in list(self.running.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._recording is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recording
        if cut:
            with contextlib.suppress(*store.DATABASE_DOWN):
                await outbox.release(self.pool, cut)
        await self.client.close()
