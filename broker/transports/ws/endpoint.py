"""`GET /devices/ws` (contract section 4): authenticate, `hello`/`welcome`,
then the session.

The token is checked before the upgrade: a bad one gets an HTTP 401 denial
response and no socket is ever opened. After `hello`/`welcome` the handler's
own task (the one uvicorn gives every connection) reads frames; jobs are
written to the socket from the sending request's task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from broker import keys, store
from broker.clock import iso, utcnow
from broker.delivery.channel import CloseReason
from broker.delivery.presence import Connection
from broker.http.responses import error_response
from broker.ops import metrics
from broker.transports.ws import session
from broker.transports.ws.channel import CLOSE_POLICY, CLOSE_PROTOCOL, WsChannel, error_frame
from protocol import frames

if TYPE_CHECKING:
    from broker.runtime import Broker

log = logging.getLogger("smsdora.devices")


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
    channel = WsChannel(ws)
    hello = await _await_hello(broker.settings.hello_timeout_s, ws, channel)
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
        await session.serve(presence, broker.dispatcher, broker.settings, ws, conn, channel)
    finally:
        if presence.unregister(conn):
            metrics.DEVICES_CONNECTED.set(presence.online_count())
            log.info("device disconnected", extra={"device_id": str(device.id)})
        channel.closed = True


async def _await_hello(timeout_s: float, ws: WebSocket,
                       channel: WsChannel) -> frames.Hello | None:
    """Frames before `hello` get `error` frames; no hello in time closes 1008."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            message = await asyncio.wait_for(session.receive(ws), deadline - time.monotonic())
        except (TimeoutError, ValueError):
            await channel.close_with(CLOSE_POLICY, "no hello in time")
            return None
        if message is None:
            return None
        data = session.payload(message)
        if data is None:
            await channel.send_frame(error_frame(frames.BINARY_FRAME, "frames are JSON text"))
            continue
        try:
            frame = frames.decode_device(data)
        except frames.FrameError as err:
            await channel.send_frame(error_frame(err.code, err.detail))
            continue
        if not isinstance(frame, frames.Hello):
            await channel.send_frame(error_frame(frames.HELLO_FIRST,
                                                 "the first frame must be hello"))
            continue
        if frame.protocol != frames.PROTOCOL_VERSION:
            await channel.send_frame(error_frame(
                frames.BAD_PROTOCOL, f"protocol {frames.PROTOCOL_VERSION} only"))
            await channel.close_with(CLOSE_PROTOCOL, "unsupported protocol version")
            return None
        return frame
