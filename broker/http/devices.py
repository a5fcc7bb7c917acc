"""`/devices`: the account's phones, registering one (contract section 3),
and managing them (section 10), through the same services as `smsdora
devices`."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker import store
from broker.clock import iso
from broker.errors import MethodNotAllowed
from broker.http.auth import authenticate
from broker.http.messages import read_share
from broker.http.params import Integer, PathId, Position
from broker.http.responses import decode, ok, read_body
from broker.services import devices as device_service
from broker.services import pairing
from protocol.api import (
    CreatedDevice,
    DeviceInfo,
    DeviceToken,
    PairingCode,
    create_device_decoder,
    update_device_decoder,
)

if TYPE_CHECKING:
    from broker.runtime import Broker

T = TypeVar("T")


DEVICE_ID = PathId("device_id", "The device's id.", not_found="Device not found")
DEVICES_LIMIT = Integer("limit", "At most this many devices (default 100).", low=1, high=100,
                        default=100)
DEVICES_CURSOR = Position("cursor", "The `nextCursor` of the previous page.")


async def list_devices(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "devices:read")
    limit = DEVICES_LIMIT.read(request.query_params)
    after = DEVICES_CURSOR.read(request.query_params)
    async with read_share(broker, key.account_id):
        rows, more = await device_service.page(broker.pool, key.account_id, limit, after)
        last = rows[-1] if rows else None
        cursor = (Position.of(last.created_at, last.id)
                  if more and last is not None and last.created_at is not None else None)
        return ok([_info(broker, d) for d in rows], next_cursor=cursor)


def _info(broker: Broker, d: store.DeviceRow) -> DeviceInfo:
    return device_service.info(broker.presence, d, broker.settings.node)


async def create_device(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    key = await authenticate(request, "devices:write")
    req = decode(create_device_decoder, body)
    send_rate = broker.settings.default_send_rate if req.sendRate is None else req.sendRate
    async with broker.pool.acquire() as db:
        device, token = await device_service.register(db, broker.secret, key.account_id,
                                                      req.name, send_rate)
    broker.wake.notify(key.account_id)  # the dashboard's devices tabs on this node
    return ok(CreatedDevice(id=str(device.id), deviceName=device.name, token=token,
                            sendRate=device.send_rate), status=201)


def _device_id(request: Request) -> uuid.UUID:
    if request.path_params["device_id"] == "codes":
        # `/devices/codes` is a route of its own that only takes POST.
        raise MethodNotAllowed("Method Not Allowed", headers={"Allow": "POST"})
    return DEVICE_ID.read(request.path_params)


async def get_device(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "devices:read")
    device_id = _device_id(request)
    return ok(_info(broker, await device_service.get(broker.pool, device_id, key.account_id)))


async def update_device(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    key = await authenticate(request, "devices:write")
    device_id = _device_id(request)
    req = decode(update_device_decoder, body)
    async with broker.pool.acquire() as db:
        row = await device_service.update(
            db, device_id, key.account_id, name=_given(req.name), send_rate=_given(req.sendRate),
            active=_given(req.active))
    device_service.follow(broker.presence, row)
    broker.wake.notify(key.account_id)
    return ok(_info(broker, row))


def _given(value: T | msgspec.UnsetType) -> T | None:
    return None if isinstance(value, msgspec.UnsetType) else value


async def delete_device(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "devices:write")
    device_id = _device_id(request)
    async with broker.pool.acquire() as db:
        row = await device_service.delete(db, device_id, key.account_id)
    return ok(_info(broker, row))


async def rotate_token(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "devices:write")
    device_id = _device_id(request)
    row, token = await device_service.rotate_token(broker.pool, broker.secret, device_id,
                                                   key.account_id)
    return ok(DeviceToken(id=str(row.id), deviceName=row.name, token=token))


async def create_code(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    key = await authenticate(request, "devices:write")
    code, expires_at = await pairing.make(broker.pool, broker.secret, key.account_id)
    return ok(PairingCode(code=code, validUntil=iso(expires_at) or "",
                          serverUrl=pairing.server_url(broker.settings)), status=201)
