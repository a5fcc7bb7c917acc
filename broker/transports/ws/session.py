"""A connected phone's session after `welcome`: read frames, hand reports to
the delivery engine, write their answers in order (contract sections 4, 5)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket

from broker import store
from broker.delivery.channel import NOT_STORED, Answer, CloseReason, Receipt
from broker.delivery.dispatch import Dispatcher
from broker.delivery.presence import Connection, Presence
from broker.delivery.reports import Result
from broker.limits import FrameThrottle
from broker.ops import metrics
from broker.settings import Settings
from broker.transports.ws.channel import CLOSE_POLICY, WsChannel, error_frame
from protocol import frames

if TYPE_CHECKING:
    from broker.runtime import Broker

log = logging.getLogger("smsdora.devices")
_RECEIVED = Receipt(frames.RECEIVED)
_answering: set[asyncio.Task[None]] = set()  # phones' receipt writers (Answers)
_storing: set[asyncio.Task[Answer]] = set()  # incoming SMS being stored
_PONG = frames.encode(frames.Pong())
# The frame counter's children, looked up once rather than per frame.
_FRAMES = {kind: metrics.FRAMES.labels(kind) for kind in (
    "flood", "throttled", "binary", "invalid", "ack", "status", "ping", "incoming", "hello")}


async def receive(ws: WebSocket) -> Any:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return message


def payload(message: Any) -> str | None:
    """Text frames only: a binary frame is refused (None)."""
    text: str | None = message.get("text")
    return text


class Answers:
    """A phone's reports (and `incoming` SMS) between their commit and their
    receipt.

    The reader does not wait for a report's commit before it reads the next
    frame: a phone with 30 jobs sends 90 reports, and one commit wait each,
    in a row, made that phone's last report wait for all the others'.
    Receipts still go out in the order the frames came (the report writer
    commits in queue order; each `incoming` is its own statement, answered
    in its turn), from one task per phone that lives only while frames are
    in flight. At most MAX_IN_FLIGHT wait; past it the reader waits too."""

    MAX_IN_FLIGHT = 64

    # Lean on purpose: one per phone that has reported (a list and no Event:
    # an idle phone's memory is issue 5's budget, 30 KiB).
    __slots__ = ("dispatcher", "conn", "channel", "queue", "task", "room")

    def __init__(self, dispatcher: Dispatcher, conn: Connection, channel: WsChannel) -> None:
        self.dispatcher = dispatcher
        self.conn = conn
        self.channel = channel
        # A report's future is its group commit's Result; an incoming SMS's
        # is its store task, done with the Answer itself.
        self.queue: list[tuple[str, asyncio.Future[Result] | asyncio.Future[Answer]]] = []
        self.task: asyncio.Task[None] | None = None
        self.room: asyncio.Future[None] | None = None  # the reader waits on it when full

    async def add(self, message_id: str,
                  result: asyncio.Future[Result] | asyncio.Future[Answer]) -> None:
        self.queue.append((message_id, result))
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
        channel = self.channel
        while self.queue:
            message_id, result = self.queue[0]
            try:
                done = await result
                answer = (self.dispatcher.answer(self.conn, message_id, done)
                          if isinstance(done, Result) else done)
            except store.DATABASE_DOWN:
                answer = NOT_STORED
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("report failed: closing the socket",
                              extra={"device_id": str(self.conn.device_id)})
                await channel.close(CloseReason.INTERNAL_ERROR)
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
            await channel.answer(message_id, answer)


def _ignore_result(future: asyncio.Future[Result] | asyncio.Future[Answer]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved"


def frame_throttle(settings: Settings) -> FrameThrottle:
    """A socket's frame budget, from its first frame (before `hello`) to its
    last: one bucket, so a phone cannot spend a burst before `hello` and get
    a fresh one with `welcome` (contract section 12)."""
    return FrameThrottle(settings.frame_rate, settings.frame_burst, time.monotonic())


async def within_budget(throttle: FrameThrottle, channel: WsChannel, device_id: object) -> bool:
    """Take one frame from the budget: wait while the phone is over its rate
    (TCP then throttles it); False once it floods, the socket closed 1008."""
    wait = throttle.take(time.monotonic())
    if wait is None:
        _FRAMES["flood"].inc()
        log.warning("frame flood: closing", extra={"device_id": str(device_id)})
        await channel.close_with(CLOSE_POLICY, "too many frames")
        return False
    if wait > 0:
        _FRAMES["throttled"].inc()
        await asyncio.sleep(wait)
    return True


async def serve(presence: Presence, dispatcher: Dispatcher, ws: WebSocket, conn: Connection,
                channel: WsChannel, throttle: FrameThrottle) -> None:
    """Read the phone's frames until its socket ends or a newer one replaces it."""
    answers: Answers | None = None  # made at the phone's first report
    while True:
        message = await receive(ws)
        if message is None:
            return
        if not presence.is_current(conn):
            return  # replaced: the new connection owns the device now
        if not await within_budget(throttle, channel, conn.device_id):
            return
        presence.touch(conn)
        data = payload(message)
        if data is None:
            _FRAMES["binary"].inc()
            await channel.send_frame(error_frame(frames.BINARY_FRAME, "frames are JSON text"))
            continue
        try:
            frame = frames.decode_device(data)
        except frames.FrameError as err:
            _FRAMES["invalid"].inc()
            await channel.send_frame(error_frame(err.code, err.detail))
            continue
        match frame:
            case frames.Ack(id=message_id):
                _FRAMES["ack"].inc()
                if answers is None:
                    answers = Answers(dispatcher, conn, channel)
                await answers.add(message_id, dispatcher.report(conn.device_id, message_id, "ack"))
            case frames.Status(id=message_id, status=status, error=error):
                _FRAMES["status"].inc()
                if answers is None:
                    answers = Answers(dispatcher, conn, channel)
                await answers.add(message_id, dispatcher.report(conn.device_id, message_id, status, error))
            case frames.Ping(health=health):
                _FRAMES["ping"].inc()
                if health is not None:
                    presence.touch(conn, health)
                await channel.send_frame(_PONG)
            case frames.Incoming():
                _FRAMES["incoming"].inc()
                if answers is None:
                    answers = Answers(dispatcher, conn, channel)
                stored = asyncio.get_running_loop().create_task(
                    store_incoming(ws.app.state.broker, conn, frame))
                _storing.add(stored)
                stored.add_done_callback(_storing.discard)
                await answers.add(frame.id, stored)
            case frames.Hello():
                _FRAMES["hello"].inc()
                await channel.send_frame(error_frame(frames.BAD_FRAME, "hello was already received"))


async def store_incoming(broker: Broker, conn: Connection, frame: frames.Incoming) -> Answer:
    """Store an SMS the phone received (contract section 9), once per
    (device, the phone's id): the answer is `receipt` `received` once it is
    committed, a repeat included (the phone reported it before a reconnect,
    or again), or NOT_STORED (`error` `unavailable`: keep it, send it again)
    when the database, the account's share of it, or the device is away."""
    account = conn.account_id
    try:
        await broker.pool_shares.acquire(account)
    except store.AccountBusy:
        return NOT_STORED
    try:
        received = await store.insert_inbound(
            broker.pool, conn.device_id, store.WEBSOCKET, frame.id, frame.sender, frame.message,
            frame.sim, frame.receivedAt)
    except store.DATABASE_DOWN:
        return NOT_STORED
    finally:
        broker.pool_shares.release(account)
    if received is None:
        return NOT_STORED  # deactivated meanwhile: its socket is being closed
    if received.inserted:
        broker.wake.poke(received.account_id)  # committed: the webhook sender looks now
    return _RECEIVED
