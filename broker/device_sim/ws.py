"""`DeviceSim`: the thin asyncio adapter around a `Phone` that owns the
socket, the reconnects, the pings and the simulated radio."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from broker.clock import iso, utcnow
from broker.device_sim.console import STDIN, Console
from broker.device_sim.phone import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    CLOSE_REPLACED,
    RETRY_S,
    WELCOME_TIMEOUT_S,
    Event,
    Job,
    Outcome,
    Phone,
    log,
)
from protocol import frames


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




class DeviceSim:
    """A `Phone` on a real WebSocket. `await run()` until cancelled.

    Reconnects with backoff (0.5 s doubling to 10 s) whenever the socket
    ends, except when replaced by a newer connection (close 4000: `run`
    returns) or refused with 401 (`run` raises DeviceRejected).

    `receive_sms` makes the phone receive an SMS (it reports it with an
    `incoming` frame, again after each reconnect, until its receipt); so
    does an `sms` command typed into `commands` (console.py; stdin, read
    only when it is a terminal or a pipe; None: no commands).
    """

    def __init__(self, url: str, token: str, *, outcome: Outcome = "delivered",
                 delay_ms: int = 0, health: frames.Health | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 commands: int | None = STDIN) -> None:
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
        self._commands = commands

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

    async def receive_sms(self, sender: str, text: str, sim: int | None = None) -> str:
        """The phone receives an SMS; returns its id. It is reported now if
        the socket is open, else at the next welcome."""
        frame = self.phone.receive_sms(sender, text, utcnow(), sim)
        await self._write(frame)
        self._flush()
        return frame.id

    async def run(self) -> None:
        backoff = BACKOFF_FIRST_S
        console = Console(self._commands, self.receive_sms, self._emit)
        console.start()
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
            console.stop()
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
        for report in self.phone.finish_send(message_id, iso(utcnow()) or ""):
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
