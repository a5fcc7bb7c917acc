"""`WsChannel`: the `DeviceChannel` of a phone on our WebSocket protocol
(contract section 4). Every frame the broker writes to a phone, and every
close code it uses, is chosen here."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from broker.delivery.channel import Answer, Cancel, CloseReason, Job, NotStored, Receipt, Refusal
from protocol import frames, lifecycle

log = logging.getLogger("smsdora.devices")

# Close codes (protocol/README.md): RFC 6455 section 7.4.1, and 4000 of ours.
CLOSE_PROTOCOL = 1002  # protocol error: an unsupported protocol version
CLOSE_POLICY = 1008  # policy violation: no hello in time, a flood, or deactivated
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_REPLACED = 4000  # a second connection with the same token replaced this one
SEND_TIMEOUT_S = 2.0
_UNTIMED = contextlib.nullcontext()

_CLOSE_CODES = {
    CloseReason.REPLACED: CLOSE_REPLACED,
    CloseReason.DEACTIVATED: CLOSE_POLICY,
    CloseReason.RESTARTING: CLOSE_RESTART,
    CloseReason.UNAVAILABLE: CLOSE_TRY_AGAIN,
    CloseReason.INTERNAL_ERROR: CLOSE_INTERNAL,
}

# A refused report's `error` frame: the lifecycle's reason, on the wire.
_REFUSALS = {
    lifecycle.REFUSED_NOT_YOURS: (frames.NOT_YOURS, "no such job for this device"),
    lifecycle.REFUSED_NOT_ACKED: (
        frames.NOT_ACKED, "job was not acked: ack it and wait for the receipt before sending"),
    lifecycle.REFUSED_FINAL: (frames.REFUSED, "report not allowed in the job's current status"),
}
_closing: set[asyncio.Task[None]] = set()  # references to close tasks in flight


def error_frame(code: str, detail: str, message_id: str | None = None) -> bytes:
    return frames.encode(frames.Error(code=code, detail=detail, id=message_id))


def answer_frame(message_id: str, answer: Answer) -> bytes:
    """A report's answer as its frame: `receipt`, `cancel` or `error`."""
    if type(answer) is Receipt:  # almost every answer: tested first, exactly
        return frames.encode(frames.Receipt(id=message_id, status=answer.status))
    if isinstance(answer, Cancel):
        return frames.encode(frames.Cancel(id=message_id, reason=answer.reason))
    if isinstance(answer, Refusal):
        wire, detail = _REFUSALS.get(answer.code, (answer.code, answer.code))
        return error_frame(wire, detail, message_id)
    if isinstance(answer, NotStored):
        # Not stored, so no receipt: the phone keeps the report in its
        # outbox and sends it again.
        return error_frame(frames.UNAVAILABLE, "database unavailable: retry later", message_id)
    raise AssertionError(f"unknown answer {answer!r}")


class WsChannel:
    """One phone's socket: frames out, and the close."""

    __slots__ = ("ws", "closed", "_writable")

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.closed = False
        # uvicorn's protocol clears this Event while the socket's buffer is
        # over its high-water mark (the phone not reading): only then can a
        # write wait. None: another server, or a wrapped `send`: every write
        # is timed.
        writable = getattr(getattr(getattr(ws, "_send", None), "__self__", None),
                           "writable", None)
        self._writable = writable if isinstance(writable, asyncio.Event) else None

    async def offer(self, job: Job) -> bool:
        return await self.send_frame(frames.encode(
            frames.Send(id=job.id, recipient=job.recipient, message=job.message)))

    async def cancel(self, message_id: str, reason: str) -> bool:
        return await self.send_frame(frames.encode(frames.Cancel(id=message_id, reason=reason)))

    async def answer(self, message_id: str, answer: Answer) -> bool:
        return await self.send_frame(answer_frame(message_id, answer))

    async def close(self, reason: CloseReason) -> None:
        await self.close_with(_CLOSE_CODES[reason], reason.value)

    async def send_frame(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            # A phone that stops reading fills its socket's buffer and the
            # write waits; nobody (a send request, the sweeper, a drain) may
            # wait on it for long. Its jobs stay in PostgreSQL and come again
            # when it reconnects.
            # While the transport takes writes one is written at once, never
            # waiting: no timer for it (one a frame was 6 % of the broker's
            # CPU in the lifecycle loop).
            untimed = self._writable is not None and self._writable.is_set()
            async with _UNTIMED if untimed else asyncio.timeout(SEND_TIMEOUT_S):
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

    async def close_with(self, code: int, reason: str = "") -> None:
        """Close with a code of this protocol's own (no hello, a flood...)."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.ws.close(code, reason)
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass  # already gone: nothing to close
