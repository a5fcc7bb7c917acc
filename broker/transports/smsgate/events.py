"""`GET /events`: the app's server-sent event stream (SMSGATE.md section 5).

A phone is online while at least one of its streams is open. Its first
stream registers it in presence, tells it to fetch webhooks and settings,
and runs the same redelivery as a WebSocket phone's connect (its open jobs
are announced); jobs the broker asked back are cancelled again. A comment
every 15 s keeps NATs and proxies from cutting an idle stream; nothing is
buffered or compressed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from broker import store
from broker.delivery.channel import CloseReason
from broker.delivery.presence import Connection
from broker.http.middleware import lift_deadline
from broker.ops import metrics
from broker.transports.smsgate import auth
from broker.transports.smsgate.channel import (
    KEEPALIVE,
    SETTINGS_UPDATED,
    WEBHOOKS_UPDATED,
    SseChannel,
    Stream,
)

if TYPE_CHECKING:
    from broker.runtime import Broker

log = logging.getLogger("smsdora.devices")
_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
]
KEEPALIVE_S = 15.0


async def events(request: Request) -> Response:
    """Authenticated like every other call (401 for an unknown token), then
    the stream."""
    device = await auth.device_of(request)
    if request.method == "HEAD":
        # Starlette answers HEAD on a GET route: the headers alone. A stream
        # would never end (its body is dropped) and show the phone online.
        return Response(headers={k.decode(): v.decode() for k, v in _HEADERS})
    return EventStream(request.app.state.broker, device)


class EventStream(Response):
    def __init__(self, broker: Broker, device: store.DeviceRow) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.broker = broker
        self.device = device

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        lift_deadline(scope)
        stream = Stream(send)
        watcher = asyncio.get_running_loop().create_task(_until_disconnect(receive, stream))
        conn, first = await self._attach(stream)
        try:
            if first:
                await self._first_stream(conn, stream)
            while not stream.ended.is_set():
                try:
                    await asyncio.wait_for(stream.ended.wait(), KEEPALIVE_S)
                except TimeoutError:
                    await stream.write(KEEPALIVE)
        finally:
            watcher.cancel()
            self._detach(conn, stream)
        with contextlib.suppress(RuntimeError, OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _attach(self, stream: Stream) -> tuple[Connection, bool]:
        """The device's connection with this stream on it; True if the
        stream is its first (the device comes online)."""
        broker, device = self.broker, self.device
        presence = broker.presence
        conn = presence.get(device.id)
        if conn is not None and isinstance(conn.channel, SseChannel) and not conn.channel.closed:
            oldest = conn.channel.attach(stream)
            if oldest is not None:
                oldest.ended.set()
            return conn, False
        channel = SseChannel()
        channel.attach(stream)
        conn = Connection(device.id, device.account_id, device.name, channel,
                          presence.pacer(device.id, device.send_rate), time.time(),
                          window=broker.settings.inflight_window)
        old = presence.register(conn)
        metrics.DEVICES_CONNECTED.set(presence.online_count())
        if old is not None:
            await old.channel.close(CloseReason.REPLACED)
        log.info("device connected", extra={"device_id": str(device.id), "transport": "smsgate"})
        return conn, True

    async def _first_stream(self, conn: Connection, stream: Stream) -> None:
        # The app fetches webhooks and settings at its start and then once a
        # day: a device that was away is told to fetch them now (SMSGATE.md 6.1).
        await stream.write(WEBHOOKS_UPDATED + SETTINGS_UPDATED)
        try:
            await self.broker.dispatcher.on_connect(conn, [])
            for message_id in await store.handbacks_requested(self.broker.pool, conn.device_id):
                await conn.channel.cancel(str(message_id), "reassigned")
        except store.DATABASE_DOWN:
            # Its jobs could not be read: come back later and get them all.
            await conn.channel.close(CloseReason.UNAVAILABLE)

    def _detach(self, conn: Connection, stream: Stream) -> None:
        channel = conn.channel
        assert isinstance(channel, SseChannel)
        presence = self.broker.presence
        if channel.detach(stream) and presence.unregister(conn):
            metrics.DEVICES_CONNECTED.set(presence.online_count())
            log.info("device disconnected", extra={"device_id": str(conn.device_id),
                                                   "transport": "smsgate"})


async def _until_disconnect(receive: Receive, stream: Stream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.ended.set()
