"""A simulated phone speaking the device protocol (contract section 4).

Two layers, as in python-websockets: `Phone` is the pure state machine (frames
in, frames and events out; no I/O, no clock: time is passed in) and
`DeviceSim` is the thin asyncio adapter that owns the socket, the
reconnects, the pings and the simulated radio. `smsdora device-sim` runs a
`DeviceSim`; the tests drive both.

The rules a phone follows, from the contract:
- keyed by message id: a `send` for an id it already knows starts no new
  work. It acks again a job it has not sent yet (the ack may repeat) and
  reports again the status of one it has sent (section 5);
- it sends the SMS only after the `receipt` for its `ack`; a receipt that
  says `sent` or `delivered` means the job was already done (section 5);
- a report stays in the outbox until its `receipt`, and the outbox is
  written again after a reconnect, so a receipt lost in a crash costs
  nothing;
- `cancel` drops a job unsent; an `error` about a job drops what it had
  queued for it, since writing it again would be refused again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from protocol import frames

log = logging.getLogger("smsdora.device_sim")

APP_VERSION: Final = "device-sim/1"
FAILURE_TEXT: Final = "simulated failure"
CLOSE_REPLACED: Final = 4000
RETRY_S: Final = 1.0  # pause before saying again what the broker could not store
WELCOME_TIMEOUT_S: Final = 10.0
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 10.0

Outcome = Literal["delivered", "sent", "failed"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("delivered", "sent", "failed")

# Job states, in the phone's own words.
ACKED: Final = "acked"  # ack written; waiting for its receipt, the go-ahead
SENDING: Final = "sending"  # go-ahead received: the SMS is going out
SENT: Final = "sent"  # outcomes reported (or, from an ack receipt, done before)
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"  # the broker took it back before it was sent
DROPPED: Final = "dropped"  # the broker refused it with an `error` frame
_UNSENT: Final = frozenset({ACKED, SENDING})
_DONE: Final = frozenset({SENT, DELIVERED, FAILED})


@dataclass
class Job:
    id: str
    recipient: str
    message: str
    state: str = ACKED
    reports: list[frames.Status] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    """Something a person watching the phone would want to see."""

    kind: str  # connected, job, sending, reported, receipt, cancelled, refused, done
    id: str | None
    detail: str


class Phone:
    """The phone's protocol state, without I/O.

    Each `on_*` method takes what arrived and returns the frames to write, in
    order; `go_ahead` lists jobs whose SMS the caller must now send, then
    finish with `finish_send`. `events` collects what happened, for display.
    """

    def __init__(self, outcome: Outcome = "delivered") -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        self.outcome: Outcome = outcome
        self.jobs: dict[str, Job] = {}
        # id -> reports written but not yet receipted, oldest first.
        self.outbox: dict[str, list[frames.Status]] = {}
        # How many times each message's SMS was handed to the radio: a job
        # that runs twice shows up as 2 here (tests assert it never does).
        self.sent_count: Counter[str] = Counter()
        self.go_ahead: list[str] = []
        # Ids whose last frame the broker could not store ("unavailable"):
        # sent again after a pause (`take_retries`).
        self.retry: set[str] = set()
        self.events: list[Event] = []
        self.pongs = 0
        self.device_id: str | None = None
        self.heartbeat_s: int | None = None

    def _event(self, kind: str, message_id: str | None, detail: str) -> None:
        self.events.append(Event(kind, message_id, detail))

    def pending(self) -> list[str]:
        """Ids it holds and has not reported: `hello.pending`."""
        return [j.id for j in self.jobs.values() if j.state in _UNSENT]

    def hello(self, health: frames.Health | None) -> frames.Hello:
        return frames.Hello(protocol=frames.PROTOCOL_VERSION, appVersion=APP_VERSION,
                            pending=self.pending(), health=health)

    def on_welcome(self, welcome: frames.Welcome) -> list[frames.Status]:
        """The outbox again: every report not yet receipted."""
        self.device_id = welcome.deviceId
        self.heartbeat_s = welcome.heartbeatSeconds
        self._event("connected", None, f"device {welcome.deviceId}")
        return [r for reports in self.outbox.values() for r in reports]

    def on_frame(self, frame: frames.BrokerFrame) -> list[frames.DeviceFrame]:
        match frame:
            case frames.Send():
                return self._on_send(frame)
            case frames.Receipt(id=message_id, status=status):
                self._on_receipt(message_id, status)
            case frames.Cancel(id=message_id, reason=reason):
                self._on_cancel(message_id, reason)
            case frames.Error(code=code, detail=detail, id=message_id):
                self._on_error(code, detail, message_id)
            case frames.Welcome():
                self._event("refused", None, "welcome again on an open socket: ignored")
            case frames.Pong():
                self.pongs += 1
        return []

    def _on_send(self, frame: frames.Send) -> list[frames.DeviceFrame]:
        job = self.jobs.get(frame.id)
        if job is None or (job.state in (CANCELLED, DROPPED) and not self.sent_count[frame.id]):
            # New, or taken back before it was sent and now given again.
            self.jobs[frame.id] = Job(frame.id, frame.recipient, frame.message)
            self._event("job", frame.id, f"to {frame.recipient}")
            return [frames.Ack(id=frame.id)]
        if job.state == ACKED:
            return [frames.Ack(id=frame.id)]  # not sent yet: its receipt is still the go-ahead
        if job.state == SENDING:
            return []  # going out now; its report follows
        # Sent (or refused after sending): report again, never send again.
        again: list[frames.DeviceFrame] = list(self.outbox.get(frame.id, ()))
        if not again and job.reports:
            again = [job.reports[-1]]
        if not again:
            return [frames.Ack(id=frame.id)]  # done before we held it: the receipt says so
        return again

    def _on_receipt(self, message_id: str, status: str) -> None:
        job = self.jobs.get(message_id)
        if job is None:
            return
        if job.state == ACKED:  # the receipt for our ack
            if status == "sending":
                job.state = SENDING
                self.sent_count[message_id] += 1
                self.go_ahead.append(message_id)
                self._event("sending", message_id, f"to {job.recipient}")
            elif status in (SENT, DELIVERED):
                job.state = status
                self._event("done", message_id, f"already {status}: not sent again")
            return
        queued = self.outbox.get(message_id)
        if queued is None:
            return  # a repeat, or the receipt of a re-ack: nothing left to forget
        for i, report in enumerate(queued):
            if report.status == status:
                del queued[i]
                break
        if not queued:
            del self.outbox[message_id]
        self._event("receipt", message_id, status)

    def _on_cancel(self, message_id: str, reason: str) -> None:
        job = self.jobs.get(message_id)
        if job is None or job.state != ACKED:
            # Sending or sent: the SMS has left, nothing can call it back.
            self._event("refused", message_id, f"cancel ({reason}) too late: already {job.state}"
                        if job else f"cancel ({reason}) for an unknown job")
            return
        job.state = CANCELLED
        self._event("cancelled", message_id, reason)

    def _on_error(self, code: str, detail: str, message_id: str | None) -> None:
        self._event("refused", message_id, f"{code}: {detail}")
        if message_id is None:
            return
        if code == frames.UNAVAILABLE:
            # Not stored, so not refused: keep it and say it again later.
            self.retry.add(message_id)
            return
        job = self.jobs.get(message_id)
        if job is not None and job.state == ACKED:
            job.state = DROPPED
        self.outbox.pop(message_id, None)

    def take_retries(self) -> list[frames.DeviceFrame]:
        """What to send again for the ids the broker could not store: the ack
        of a job still waiting for its go-ahead, else its unreceipted reports."""
        out: list[frames.DeviceFrame] = []
        for message_id in sorted(self.retry):
            job = self.jobs.get(message_id)
            if job is not None and job.state == ACKED:
                out.append(frames.Ack(id=message_id))
            out.extend(self.outbox.get(message_id, ()))
        self.retry.clear()
        return out

    def finish_send(self, message_id: str, at: str) -> list[frames.Status]:
        """The radio is done with the SMS: the reports of the outcome, into the outbox."""
        job = self.jobs[message_id]
        if self.outcome == "failed":
            reports = [frames.Status(id=message_id, status="failed", error=FAILURE_TEXT, at=at)]
        elif self.outcome == "sent":
            reports = [frames.Status(id=message_id, status="sent", at=at)]
        else:
            reports = [frames.Status(id=message_id, status="sent", at=at),
                       frames.Status(id=message_id, status="delivered", at=at)]
        job.state = reports[-1].status
        job.reports.extend(reports)
        self.outbox.setdefault(message_id, []).extend(reports)
        self._event("reported", message_id, job.state)
        return reports


class DeviceRejected(Exception):
    """The broker refused the token before the upgrade (HTTP 401)."""


def ws_url(url: str) -> str:
    """`http://host:port` (or `ws://...`) -> the device endpoint `ws://host:port/devices/ws`."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/devices/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class DeviceSim:
    """A `Phone` on a real WebSocket. `await run()` until cancelled.

    Reconnects with backoff (0.5 s doubling to 10 s) whenever the socket
    ends, except when replaced by a newer connection (close 4000: `run`
    returns) or refused with 401 (`run` raises DeviceRejected).
    """

    def __init__(self, url: str, token: str, *, outcome: Outcome = "delivered",
                 delay_ms: int = 0, health: frames.Health | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.url = ws_url(url)
        self._token = token
        self.phone = Phone(outcome)
        self.delay_s = max(0, delay_ms) / 1000
        self.health = health or frames.Health(battery=87, charging=True, signal=4)
        self.on_event = on_event
        self.connections = 0  # welcomes received
        self.close_code: int | None = None  # of the last socket
        self._ws: ClientConnection | None = None
        self._radio: dict[str, asyncio.Task[None]] = {}
        self._retrier: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def sent_count(self) -> Counter[str]:
        return self.phone.sent_count

    @property
    def jobs(self) -> dict[str, Job]:
        return self.phone.jobs

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once `predicate()` holds; it is checked after every change."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def drop_connection(self) -> None:
        """Close the socket as a flaky network would; `run` reconnects."""
        if self._ws is not None:
            await self._ws.close(1001, "device-sim drop")

    async def run(self) -> None:
        backoff = BACKOFF_FIRST_S
        try:
            while True:
                welcomed_before = self.connections
                self.close_code = None
                try:
                    async with connect(self.url,
                                       additional_headers={"Authorization": f"Bearer {self._token}"},
                                       compression=None, open_timeout=10,
                                       max_size=frames.MAX_FRAME_BYTES) as ws:
                        await self._session(ws)
                except InvalidStatus as err:
                    if err.response.status_code == 401:
                        raise DeviceRejected("the broker refused the device token (401)") from None
                    log.warning("connect refused", extra={"status": err.response.status_code})
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as err:
                    log.info("connection ended", extra={"error": type(err).__name__})
                if self.close_code == CLOSE_REPLACED:
                    self._emit(Event("replaced", None, "another connection took over: exiting"))
                    return
                if self.connections > welcomed_before:
                    backoff = BACKOFF_FIRST_S
                self._emit(Event("disconnected", None, f"reconnecting in {backoff:g} s"))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            if self._retrier is not None:
                self._retrier.cancel()
            for task in self._radio.values():
                task.cancel()
            await asyncio.gather(*self._radio.values(), return_exceptions=True)

    async def _session(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.close_code = None
        pinger: asyncio.Task[None] | None = None
        try:
            await ws.send(frames.encode(self.phone.hello(self.health)).decode())
            async with asyncio.timeout(WELCOME_TIMEOUT_S):
                welcome = await self._await_welcome(ws)
            if welcome is None:
                return  # closed before the welcome
            self.connections += 1
            for report in self.phone.on_welcome(welcome):
                await self._write(report)
            self._flush()
            pinger = asyncio.get_running_loop().create_task(self._ping(welcome.heartbeatSeconds))
            async for raw in ws:
                await self._handle(raw)
        finally:
            self._ws = None
            self.close_code = ws.close_code
            if pinger is not None:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger
            self._flush()

    async def _await_welcome(self, ws: ClientConnection) -> frames.Welcome | None:
        async for raw in ws:
            frame = self._decode(raw)
            if isinstance(frame, frames.Welcome):
                return frame
            if frame is not None:
                await self._apply(frame)
        return None

    def _decode(self, raw: str | bytes) -> frames.BrokerFrame | None:
        try:
            return frames.decode_broker(raw)
        except frames.FrameError as err:
            log.warning("unreadable frame from broker", extra={"code": err.code})
            return None

    async def _handle(self, raw: str | bytes) -> None:
        frame = self._decode(raw)
        if frame is not None:
            await self._apply(frame)

    async def _apply(self, frame: frames.BrokerFrame) -> None:
        for out in self.phone.on_frame(frame):
            await self._write(out)
        if self.phone.retry and (self._retrier is None or self._retrier.done()):
            self._retrier = asyncio.get_running_loop().create_task(self._retry_later())
        while self.phone.go_ahead:
            message_id = self.phone.go_ahead.pop(0)
            task = asyncio.get_running_loop().create_task(self._transmit(message_id))
            self._radio[message_id] = task
            task.add_done_callback(functools.partial(self._radio_done, message_id))
        self._flush()

    def _radio_done(self, message_id: str, task: asyncio.Task[None]) -> None:
        if self._radio.get(message_id) is task:
            del self._radio[message_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("simulated send failed", exc_info=task.exception())

    async def _retry_later(self) -> None:
        """The broker could not store some frames (its database is away):
        say them again after a pause, as often as it takes."""
        await asyncio.sleep(RETRY_S)
        for out in self.phone.take_retries():
            await self._write(out)

    async def _transmit(self, message_id: str) -> None:
        """The radio: sending takes `delay_ms`, then the outcome is reported."""
        await asyncio.sleep(self.delay_s)
        for report in self.phone.finish_send(message_id, _now()):
            await self._write(report)
        self._flush()

    async def _write(self, frame: frames.DeviceFrame) -> None:
        ws = self._ws
        if ws is None:
            return  # acks are redone on the next `send`, reports replayed from the outbox
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frames.encode(frame).decode())

    async def _ping(self, every_s: int) -> None:
        while True:
            await asyncio.sleep(max(1, every_s))
            await self._write(frames.Ping(health=self.health))

    def _flush(self) -> None:
        for event in self.phone.events:
            self._emit(event)
        self.phone.events.clear()
        self._changed.set()

    def _emit(self, event: Event) -> None:
        log.debug("device-sim event", extra={"kind": event.kind, "message_id": event.id})
        if self.on_event is not None:
            self.on_event(event)
        self._changed.set()


async def run(url: str, token: str, outcome: Outcome = "delivered", delay_ms: int = 0,
              on_event: Callable[[Event], None] | None = None) -> DeviceSim:
    """Run a simulated phone until cancelled or replaced; returns it."""
    sim = DeviceSim(url, token, outcome=outcome, delay_ms=delay_ms, on_event=on_event)
    await sim.run()
    return sim
