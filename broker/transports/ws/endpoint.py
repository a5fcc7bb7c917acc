"""`GET /devices/ws` (contract section 4): authenticate, `hello`/`welcome`,
then the session.

The token is checked before the upgrade: a bad one gets an HTTP 401 denial
response and no socket is ever opened. After `hello`/`welcome` the handler's
own task (the one uvicorn gives every connection) reads frames; jobs are
written to the socket from the sending request's task.

Before `hello` the limits are those after it (contract section 12): the
frame budget from the first frame, and one pending handshake per device
token (`PendingHellos`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.websockets import WebSocket

from broker import keys, store
from broker.clock import iso, utcnow
from broker.delivery.channel import CloseReason
from broker.delivery.presence import Connection
from broker.errors import BrokerError
from broker.http import auth
from broker.http.responses import error_response
from broker.limits import FrameThrottle
from broker.ops import metrics
from broker.transports.ws import session
from broker.transports.ws.channel import (
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    SEND_TIMEOUT_S,
    WsChannel,
    error_frame,
)
from protocol import frames

if TYPE_CHECKING:
    from broker.runtime import Broker

log = logging.getLogger("smsdora.devices")


async def _authenticate(broker: Broker, ws: WebSocket) -> store.DeviceRow | Response:
    """The active device of the Bearer token, or the denial to answer: 401,
    400 for two tokens, 429 for an address whose tokens keep failing
    (contract section 12; counted with every other failed credential)."""
    address, now = auth.address_of(ws), time.monotonic()
    try:
        token = keys.bearer(ws.headers, api=False)
        if token is None:
            auth.refuse_if_throttled(broker, address, now)
            return error_response(401, "Invalid device token")  # no guess: not counted
        taken = auth.check_throttle(broker, address, now)
    except BrokerError as err:
        return error_response(err.status, err.message, err.headers)
    prefix = keys.parse_prefix(keys.TOKEN_KIND, token)
    device = await broker.devices_by_token.get(prefix) if prefix is not None else None
    if device is None or not keys.matches(broker.secret, token, device.token_hash) \
            or not device.active:
        auth.failed(broker, address, taken)
        return error_response(401, "Invalid device token")
    auth.passed(broker, address, taken)
    return device


async def device_socket(ws: WebSocket) -> None:
    broker: Broker = ws.app.state.broker
    try:
        device = await _authenticate(broker, ws)
    except store.DATABASE_DOWN:
        await ws.send_denial_response(error_response(503, "Database unavailable"))
        return
    if not isinstance(device, store.DeviceRow):
        await ws.send_denial_response(device)
        return
    await ws.accept()
    channel = WsChannel(ws)
    throttle = session.frame_throttle(broker.settings)
    hello = await _handshake(broker, ws, device.id, channel, throttle)
    if hello is None:
        return
    presence = broker.presence
    conn = Connection(device.id, device.account_id, device.name, channel,
                      presence.pacer(device.id, device.send_rate), time.time(),
                      window=broker.settings.inflight_window)
    conn.app_version = hello.appVersion or None
    conn.health = hello.health
    old = presence.register(conn)
    metrics.DEVICES_CONNECTED.set(presence.online_count())
    if old is not None:
        await old.channel.close(CloseReason.REPLACED)
    await channel.send_frame(frames.encode(frames.Welcome(
        deviceId=str(device.id), heartbeatSeconds=broker.settings.heartbeat_s,
        serverTime=iso(utcnow()) or "",
    )))
    log.info("device connected", extra={"device_id": str(device.id)})
    try:
        try:
            await broker.dispatcher.on_connect(conn, list(hello.pending))
        except store.DATABASE_DOWN:
            # Its jobs could not be read: come back later and get them all.
            await channel.close(CloseReason.UNAVAILABLE)
            return
        await session.serve(presence, broker.dispatcher, ws, conn, channel, throttle)
    finally:
        if presence.unregister(conn):
            metrics.DEVICES_CONNECTED.set(presence.online_count())
            log.info("device disconnected", extra={"device_id": str(device.id)})
        channel.closed = True


class PendingHellos:
    """Each device's socket that is open but has not said `hello` yet: one
    per device token. A newer one replaces the older, which is closed 4000
    as a newer connection replaces a connected phone (contract section 4):
    so a token holds one pending socket however many are opened with it, and
    a phone whose last socket died before its `hello` (the broker still
    waiting for it) reconnects at once rather than after that deadline."""

    def __init__(self) -> None:
        self._channels: dict[uuid.UUID, WsChannel] = {}

    def add(self, device_id: uuid.UUID, channel: WsChannel) -> WsChannel | None:
        """`channel` is the device's pending socket now; the one it replaces."""
        old = self._channels.get(device_id)
        self._channels[device_id] = channel
        return old

    def holds(self, device_id: uuid.UUID, channel: WsChannel) -> bool:
        return self._channels.get(device_id) is channel

    def remove(self, device_id: uuid.UUID, channel: WsChannel) -> None:
        if self._channels.get(device_id) is channel:
            del self._channels[device_id]

    def __len__(self) -> int:
        return len(self._channels)


def pending_hellos(ws: WebSocket) -> PendingHellos:
    """The app's `PendingHellos` (app.state: one per broker, as presence is)."""
    state = ws.app.state
    pending: PendingHellos | None = getattr(state, "pending_hellos", None)
    if pending is None:
        pending = state.pending_hellos = PendingHellos()
    return pending


async def _handshake(broker: Broker, ws: WebSocket, device_id: uuid.UUID, channel: WsChannel,
                     throttle: FrameThrottle) -> frames.Hello | None:
    """The device's `hello`, as its one pending socket; None if the socket
    ended, was closed or was replaced first."""
    pending = pending_hellos(ws)
    old = pending.add(device_id, channel)
    try:
        if old is not None:
            try:
                # Bounded: an old socket that does not read must not hold
                # the new one up; its own handler stops at its next frame.
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await old.close(CloseReason.REPLACED)
            except TimeoutError:
                log.info("replaced pending socket not closed in time",
                         extra={"device_id": str(device_id)})
        return await _await_hello(broker.settings.hello_timeout_s, ws, channel, throttle,
                                  device_id, pending)
    finally:
        pending.remove(device_id, channel)


async def _await_hello(timeout_s: float, ws: WebSocket, channel: WsChannel,
                       throttle: FrameThrottle, device_id: uuid.UUID,
                       pending: PendingHellos) -> frames.Hello | None:
    """Frames before `hello` get `error` frames, within the socket's frame
    budget (a flood is closed 1008, as after `welcome`); no hello in time
    closes 1008; a socket replaced meanwhile ends."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await session.receive(ws)
                if message is None or not pending.holds(device_id, channel):
                    return None
                if not await session.within_budget(throttle, channel, device_id):
                    return None
                frame = await _decode_before_hello(channel, message)
                if frame is not None:
                    return frame if await _protocol_ok(channel, frame) else None
    except TimeoutError:
        await channel.close_with(CLOSE_POLICY, "no hello in time")
        return None


async def _decode_before_hello(channel: WsChannel, message: object) -> frames.Hello | None:
    """The frame if it is a `hello`; anything else is answered with its
    `error` frame (None)."""
    data = session.payload(message)
    if data is None:
        await channel.send_frame(error_frame(frames.BINARY_FRAME, "frames are JSON text"))
        return None
    try:
        frame = frames.decode_device(data)
    except frames.FrameError as err:
        await channel.send_frame(error_frame(err.code, err.detail))
        return None
    if not isinstance(frame, frames.Hello):
        await channel.send_frame(error_frame(frames.HELLO_FIRST, "the first frame must be hello"))
        return None
    return frame


async def _protocol_ok(channel: WsChannel, hello: frames.Hello) -> bool:
    if hello.protocol == frames.PROTOCOL_VERSION:
        return True
    await channel.send_frame(error_frame(
        frames.BAD_PROTOCOL, f"protocol {frames.PROTOCOL_VERSION} only"))
    await channel.close_with(CLOSE_PROTOCOL, "unsupported protocol version")
    return False
