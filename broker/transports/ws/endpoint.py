"""The device WebSocket adapter (contract section 4): decode, act, encode.

The token is checked before the upgrade: a bad one gets an HTTP 401 denial
response and no socket is ever opened. After `hello`/`welcome` the handler's
own task (the one uvicorn gives every connection) reads frames; jobs are
written to the socket from the sending request's task.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from broker import keys, store
from broker.ops import metrics
from broker.http.api import error_response
from broker.delivery.presence import Connection
from broker.delivery.reports import Result
from protocol import frames

if TYPE_CHECKING:
    from broker.app import Broker
    from broker.delivery.dispatch import Dispatcher

log = logging.getLogger("smsdora.devices")

CLOSE_REPLACED = 4000
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_PROTOCOL = 1002
CLOSE_TRY_AGAIN = 1013
CLOSE_INTERNAL = 1011
SEND_TIMEOUT_S = 2.0
_closing: set[asyncio.Task[None]] = set()  # references to close tasks in flight
_answering: set[asyncio.Task[None]] = set()  # phones' receipt writers (Answers)


class WsSocket:
    """What presence and the dispatcher see of a phone's socket."""

    __slots__ = ("ws", "closed")

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.closed = False

    async def send_frame(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            # A phone that stops reading fills its socket's buffer and the
            # write waits; nobody (a send request, the sweeper, a drain) may
            # wait on it for long. Its jobs stay in PostgreSQL and come again
            # when it reconnects.
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.send({"type": "websocket.send", "text": data.decode()})
            return True
        except TimeoutError:
            log.warning("phone not reading: closing its socket")
            self.closed = True
            task = asyncio.get_running_loop().create_task(self._close_stalled())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
            return False
        except (RuntimeError, OSError, WebSocketDisconnect) as err:
            # Closed under us: the job stays in PostgreSQL for the reconnect.
            self.closed = True
            log.info("frame not written: socket closed", extra={"reason": type(err).__name__})
            return False

    async def _close_stalled(self) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.close(CLOSE_TRY_AGAIN, "not reading")
        except (TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            pass  # the heartbeat ends it in any case

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.ws.close(code, reason)
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass  # already gone: nothing to close


async def _authenticate(broker: Broker, ws: WebSocket) -> store.DeviceRow | None:
    token = keys.bearer(ws.headers, api=False)
    prefix = keys.parse_prefix(keys.TOKEN_KIND, token) if token else None
    if token is None or prefix is None:
        return None
    device = await broker.devices_by_token.get(prefix)
    if device is None or not keys.matches(broker.secret, token, device.token_hash):
        return None
    return device if device.active else None


async def device_socket(ws: WebSocket) -> None:
    broker: Broker = ws.app.state.broker
    try:
        device = await _authenticate(broker, ws)
    except store.DATABASE_DOWN:
        await ws.send_denial_response(error_response(503, "Database unavailable"))
        return
    if device is None:
        await ws.send_denial_response(error_response(401, "Invalid device token"))
        return
    await ws.accept()
    sock = WsSocket(ws)
    hello = await _await_hello(broker, ws, sock)
    if hello is None:
        return
    conn = Connection(device.id, device.account_id, device.name, sock,
                      broker.presence.pacer(device.id, device.send_rate), time.time(),
                      window=broker.settings.inflight_window)
    conn.app_version = hello.appVersion or None
    conn.health = hello.health
    old = broker.presence.register(conn)
    metrics.DEVICES_CONNECTED.set(broker.presence.online_count())
    if old is not None:
        await old.socket.close(CLOSE_REPLACED, "replaced by a newer connection")
    await sock.send_frame(frames.encode(frames.Welcome(
        deviceId=str(device.id), heartbeatSeconds=broker.settings.heartbeat_s,
        serverTime=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
    )))
    log.info("device connected", extra={"device_id": str(device.id)})
    try:
        try:
            await broker.dispatcher.on_connect(conn, list(hello.pending))
        except store.DATABASE_DOWN:
            # Its jobs could not be read: come back later and get them all.
            await sock.close(CLOSE_TRY_AGAIN, "database unavailable")
            return
        await _serve(broker, ws, conn)
    finally:
        if broker.presence.unregister(conn):
            metrics.DEVICES_CONNECTED.set(broker.presence.online_count())
            log.info("device disconnected", extra={"device_id": str(device.id)})
        sock.closed = True


async def _receive(ws: WebSocket) -> Any:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return message


def _payload(message: Any) -> str | bytes | None:
    """Text frames only: a binary frame is refused (None)."""
    text = message.get("text")
    return text if text is not None else None


async def _await_hello(broker: Broker, ws: WebSocket, sock: WsSocket) -> frames.Hello | None:
    """Frames before `hello` get `error` frames; no hello in time closes 1008."""
    deadline = time.monotonic() + broker.settings.hello_timeout_s
    while True:
        try:
            message = await asyncio.wait_for(_receive(ws), deadline - time.monotonic())
        except (asyncio.TimeoutError, ValueError):
            await sock.close(CLOSE_POLICY, "no hello in time")
            return None
        if message is None:
            return None
        data = _payload(message)
        if data is None:
            await sock.send_frame(_error(frames.BINARY_FRAME, "frames are JSON text"))
            continue
        try:
            frame = frames.decode_device(data)
        except frames.FrameError as err:
            await sock.send_frame(_error(err.code, err.detail))
            continue
        if not isinstance(frame, frames.Hello):
            await sock.send_frame(_error(frames.HELLO_FIRST, "the first frame must be hello"))
            continue
        if frame.protocol != frames.PROTOCOL_VERSION:
            await sock.send_frame(_error(
                frames.BAD_PROTOCOL, f"protocol {frames.PROTOCOL_VERSION} only"))
            await sock.close(CLOSE_PROTOCOL, "unsupported protocol version")
            return None
        return frame


class FrameBucket:
    """Per-connection token bucket for frames: `rate` a second, `burst` at
    once. Past it the reader waits (the phone is throttled by TCP itself);
    a phone that stays over it for `burst` frames in a row is flooding and
    its socket is closed with 1008."""

    __slots__ = ("rate", "burst", "tokens", "at", "strikes")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at, self.strikes = float(burst), now, 0

    def take(self, now: float) -> float | None:
        """Seconds to wait before this frame may be handled (0: now), or
        None: a flood, close the socket."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0
        if self.tokens >= 0:
            self.strikes = 0
            return 0.0
        self.strikes += 1
        if self.strikes > self.burst:
            return None
        return -self.tokens / self.rate


class Answers:
    """A phone's reports between their group commit and their receipt.

    The reader does not wait for a report's commit before it reads the next
    frame: a phone with 30 jobs sends 90 reports, and one commit wait each,
    in a row, made that phone's last report wait for all the others'.
    Receipts still go out in the order the reports came (the report writer
    commits in queue order), from one task per phone that lives only while
    reports are in flight. At most MAX_IN_FLIGHT wait; past it the reader
    waits too."""

    MAX_IN_FLIGHT = 64

    # Lean on purpose: one per phone that has reported (a list and no Event:
    # an idle phone's memory is issue 5's budget, 30 KiB).
    __slots__ = ("dispatcher", "conn", "queue", "task", "room")

    def __init__(self, dispatcher: Dispatcher, conn: Connection) -> None:
        self.dispatcher = dispatcher
        self.conn = conn
        self.queue: list[tuple[frames.Ack | frames.Status, asyncio.Future[Result]]] = []
        self.task: asyncio.Task[None] | None = None
        self.room: asyncio.Future[None] | None = None  # the reader waits on it when full

    async def add(self, frame: frames.Ack | frames.Status, result: asyncio.Future[Result]) -> None:
        self.queue.append((frame, result))
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._answer_all())
            _answering.add(self.task)
            self.task.add_done_callback(_answering.discard)
        while len(self.queue) >= self.MAX_IN_FLIGHT:
            self.room = loop.create_future()
            await self.room

    def _made_room(self) -> None:
        if self.room is not None and not self.room.done():
            self.room.set_result(None)

    async def _answer_all(self) -> None:
        sock = self.conn.socket
        while self.queue:
            frame, result = self.queue[0]
            try:
                answer = self.dispatcher.answer(self.conn, frame, await result)
            except store.DATABASE_DOWN:
                # Not stored, so no receipt: the phone keeps the report in
                # its outbox and sends it again.
                answer = _error(frames.UNAVAILABLE, "database unavailable: retry later", frame.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("report failed: closing the socket",
                              extra={"device_id": str(self.conn.device_id)})
                await sock.close(CLOSE_INTERNAL, "internal error")
                # Nothing more is answered on this socket (the phone sends
                # its reports again on its next one); what is still queued,
                # and whatever the reader adds meanwhile, is let go.
                while self.queue:
                    _, pending = self.queue.pop()
                    pending.add_done_callback(_ignore_result)
                self._made_room()
                return
            del self.queue[0]
            self._made_room()
            await sock.send_frame(answer)


def _ignore_result(future: asyncio.Future[Result]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved"


async def _serve(broker: Broker, ws: WebSocket, conn: Connection) -> None:
    presence, dispatcher, sock = broker.presence, broker.dispatcher, conn.socket
    settings = broker.settings
    answers: Answers | None = None  # made at the phone's first report
    bucket = FrameBucket(settings.frame_rate, settings.frame_burst, time.monotonic())
    while True:
        message = await _receive(ws)
        if message is None:
            return
        if not presence.is_current(conn):
            return  # replaced: the new connection owns the device now
        wait = bucket.take(time.monotonic())
        if wait is None:
            metrics.FRAMES.labels("flood").inc()
            log.warning("frame flood: closing", extra={"device_id": str(conn.device_id)})
            await sock.close(CLOSE_POLICY, "too many frames")
            return
        if wait > 0:
            metrics.FRAMES.labels("throttled").inc()
            await asyncio.sleep(wait)
        presence.touch(conn)
        data = _payload(message)
        if data is None:
            metrics.FRAMES.labels("binary").inc()
            await sock.send_frame(_error(frames.BINARY_FRAME, "frames are JSON text"))
            continue
        try:
            frame = frames.decode_device(data)
        except frames.FrameError as err:
            metrics.FRAMES.labels("invalid").inc()
            await sock.send_frame(_error(err.code, err.detail))
            continue
        match frame:
            case frames.Ack() | frames.Status():
                metrics.FRAMES.labels("ack" if isinstance(frame, frames.Ack) else "status").inc()
                if answers is None:
                    answers = Answers(dispatcher, conn)
                await answers.add(frame, dispatcher.report(conn, frame))
            case frames.Ping(health=health):
                metrics.FRAMES.labels("ping").inc()
                if health is not None:
                    presence.touch(conn, health)
                await sock.send_frame(_PONG)
            case frames.Hello():
                metrics.FRAMES.labels("hello").inc()
                await sock.send_frame(_error(frames.BAD_FRAME, "hello was already received"))


_PONG = frames.encode(frames.Pong())


def _error(code: str, detail: str, message_id: str | None = None) -> bytes:
    return frames.encode(frames.Error(code=code, detail=detail, id=message_id))
