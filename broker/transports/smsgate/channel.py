"""`SseChannel`: the `DeviceChannel` of a phone on the SMS Gateway for
Android app (CONTRACT section 8, shared/SMSGATE.md section 5). Every byte
the broker writes on `GET /events` is chosen here.

The app takes no job over the stream: an event tells it to look
(`MessageEnqueued` makes it `GET /message`), so a job is "offered" by one
event, and one event covers every job committed before the phone's next
look. The device may have several streams open at once (the app opens a
second one on a re-registration without closing the first): each event goes
to all of them; the device is online while one is open."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from starlette.types import Send

from broker.delivery.channel import Answer, CloseReason, Job

log = logging.getLogger("smsdora.devices")

SEND_TIMEOUT_S = 2.0
MAX_STREAMS = 4  # per device: a fifth ends the oldest
# An announcement not followed by a `GET /message` within this is made again
# (the event may have been lost with a stream that broke).
REANNOUNCE_S = 5.0

# Frames as the app's parser reads them (SMSGATE.md 5.1): an event is only
# dispatched with a `data:` line, so every event has one.
ENQUEUED = b"event: MessageEnqueued\ndata: null\n\n"
WEBHOOKS_UPDATED = b"event: WebhooksUpdated\ndata: null\n\n"
SETTINGS_UPDATED = b"event: SettingsUpdated\ndata: null\n\n"
KEEPALIVE = b":keepalive\n\n"
_encoder = msgspec.json.Encoder()


def cancelled_frame(message_id: str) -> bytes:
    """`MessageCancelled` with the payload the app requires (it crashes on a
    missing one, SMSGATE.md 5.2)."""
    return b"event: MessageCancelled\ndata: " + _encoder.encode({"messageId": message_id}) \
        + b"\n\n"


class Stream:
    """One open `GET /events`: its ASGI `send`, and the signal that ends it."""

    __slots__ = ("send", "ended")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.ended = asyncio.Event()

    async def write(self, data: bytes) -> bool:
        if self.ended.is_set():
            return False
        try:
            # A phone that stops reading fills the socket's buffer: nobody
            # (a send request, the sweeper) waits on it for long.
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.send({"type": "http.response.body", "body": data, "more_body": True})
            return True
        except TimeoutError:
            log.warning("phone not reading its event stream: ending it")
        except (RuntimeError, OSError) as err:
            log.info("event not written: stream closed", extra={"reason": type(err).__name__})
        self.ended.set()
        return False


class SseChannel:
    """A device's open event streams."""

    __slots__ = ("streams", "closed", "announced_at", "more", "suppressed")

    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.closed = False
        # When `MessageEnqueued` was last written with no `GET /message`
        # since (None: the phone has looked since).
        self.announced_at: float | None = None
        self.more = False  # the last listing had a full page and more behind it
        # A job was offered while an announcement waited for its look: if
        # that look was served by another node (which could not say so in
        # time), it may not have listed the job.
        self.suppressed = False

    def attach(self, stream: Stream) -> Stream | None:
        """A new stream of the device; returns the oldest when past the cap."""
        self.streams.append(stream)
        return self.streams.pop(0) if len(self.streams) > MAX_STREAMS else None

    def detach(self, stream: Stream) -> bool:
        """Forget an ended stream; True if it was the device's last."""
        if stream in self.streams:
            self.streams.remove(stream)
        return not self.streams

    def looked(self) -> None:
        """The phone is listing its jobs: what was announced is seen."""
        self.announced_at = None

    async def announce(self) -> bool:
        """Tell the phone to look now."""
        self.announced_at = time.monotonic()
        self.suppressed = False
        return await self.broadcast(ENQUEUED)

    async def looked_elsewhere(self) -> None:
        """The phone listed its jobs at another node (CONTRACT section 13),
        told here over the bus, after its listing: a job offered meanwhile is
        announced again (an extra look lists nothing new at worst)."""
        self.announced_at = None
        if self.suppressed:
            await self.announce()

    async def broadcast(self, data: bytes) -> bool:
        """Write to every open stream; True if at least one took it."""
        written = False
        for stream in list(self.streams):
            written = await stream.write(data) or written
        return written

    # --- DeviceChannel --------------------------------------------------------

    async def offer(self, job: Job) -> bool:
        if self.closed or not self.streams:
            return False
        at = self.announced_at
        if at is not None and time.monotonic() - at < REANNOUNCE_S:
            self.suppressed = True
            return True  # the phone's next look, already asked for, lists it
        return await self.announce()

    async def cancel(self, message_id: str, reason: str) -> bool:
        # The app's event carries no reason: a job it still holds unsent is
        # cancelled and answered with `PATCH Cancelled`.
        return await self.broadcast(cancelled_frame(message_id))

    async def answer(self, message_id: str, answer: Answer) -> bool:
        # The app's reports are answered by their PATCH's status, not here.
        return True

    async def close(self, reason: CloseReason) -> None:
        """End every stream (the app comes back by itself: 5 s later, then
        30 s, then every minute)."""
        self.closed = True
        for stream in self.streams:
            stream.ended.set()
