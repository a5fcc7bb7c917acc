"""`/devices`: the account's phones, and registering one (contract section 3)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker import store
from broker.clock import iso
from broker.http.auth import authenticate
from broker.http.responses import decode, ok, read_body
from broker.services import devices as device_service
from protocol.api import CreatedDevice, DeviceHealth, DeviceInfo, create_device_decoder

if TYPE_CHECKING:
    from broker.runtime import Broker


async def list_devices(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "devices:read")
    return ok([_info(broker, d) for d in await store.list_devices(broker.pool, key.account_id)])


def _info(broker: Broker, d: store.DeviceRow) -> DeviceInfo:
    # Online, or gone so recently that last-seen is not flushed yet.
    conn = broker.presence.get(d.id) or broker.presence.unflushed(d.id)
    last_seen = (dt.datetime.fromtimestamp(conn.last_seen_at, dt.UTC)
                 if conn is not None else d.last_seen_at)
    if conn is not None and conn.health is not None:
        health: DeviceHealth | None = DeviceHealth(
            battery=conn.health.battery, charging=conn.health.charging, signal=conn.health.signal)
    else:
        health = msgspec.convert(d.health, DeviceHealth) if d.health else None
    return DeviceInfo(
        id=str(d.id), deviceName=d.name, online=broker.presence.get(d.id) is not None,
        lastSeen=iso(last_seen), active=d.active, sendRate=d.send_rate, health=health,
        appVersion=(conn.app_version if conn is not None else d.app_version),
        transport=d.transport,
    )


async def create_device(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    key = await authenticate(request, "devices:write")
    req = decode(create_device_decoder, body)
    send_rate = broker.settings.default_send_rate if req.sendRate is None else req.sendRate
    async with broker.pool.acquire() as db:
        device, token = await device_service.register(db, broker.secret, key.account_id,
                                                      req.name, send_rate)
    return ok(CreatedDevice(id=str(device.id), deviceName=device.name, token=token,
                            sendRate=device.send_rate), status=201)
