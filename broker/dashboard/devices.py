"""The dashboard's phones (CONTRACT section 11): the account's devices with
live online/offline, "Add a phone" (a pairing code and QR code for the SMS
Gateway app, a device token for a WebSocket phone, each shown once), and
per device rename, send rate, deactivate and reactivate — through
services/devices.py and services/pairing.py, as `/devices` and `smsdora
devices`.

The live feed re-renders every row of the page (an account has at most its
plan's devices) and names the rendering by its hash: nothing is sent while
that hash is the one the browser last saw."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import segno
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker import store
from broker.dashboard.live import Update, feed
from broker.dashboard.web import Session, broker_of, page, redirect, render, templates
from broker.errors import BadRequest
from broker.http.messages import read_share
from broker.services import devices as device_service
from broker.services import pairing
from broker.transports.smsgate.inbound import request_origin
from protocol.api import MAX_NAME_CHARS, DeviceInfo

if TYPE_CHECKING:
    from broker.runtime import Broker

MAX_SEND_RATE = 100_000  # as the API's sendRate (protocol/api.py)
TRANSPORTS = {store.WEBSOCKET: "WebSocket", store.SMSGATE: "SMS Gateway app"}
BODY_ID = "devices-body"


# --- reading -----------------------------------------------------------------------


async def _infos(broker: Broker, account_id: uuid.UUID,
                 device_id: uuid.UUID | None = None) -> list[DeviceInfo]:
    """The account's devices newest first (a new one is put at the top of
    the table), or just `device_id` (DeviceNotFound if not the account's)."""
    async with read_share(broker, account_id):
        if device_id is not None:
            rows = [await device_service.get(broker.pool, device_id, account_id)]
        else:
            rows = (await device_service.page(broker.pool, account_id, None)).devices[::-1]
    return [device_service.info(broker.presence, d, broker.settings.node) for d in rows]


def _rows(devices: list[DeviceInfo], *, into: bool = True) -> list[str]:
    """One `<tr id="device-ID">` per device, and the "no phones yet" row
    (hidden once there is one)."""
    row = templates.get_template("_device_row.html")
    html = [row.render(d=d, into=BODY_ID if into else None, transports=TRANSPORTS).strip()
            for d in devices]
    if into:
        html.append(templates.get_template("_device_none.html").render(
            empty=not devices).strip())
    return html


def _version(html: list[str]) -> str:
    return hashlib.sha256("\n".join(html).encode()).hexdigest()[:20]


def _device_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["device_id"])
    except ValueError:
        raise device_service.DeviceNotFound() from None


@feed("devices")
async def devices_feed(request: Request, account_id: uuid.UUID, query: Mapping[str, str],
                       cursor: str | None) -> Update:
    """Every row (or, with `device=ID`, that device's row) when any changed
    since `cursor` (at first, the page's own `v=`); nothing otherwise."""
    broker = broker_of(request)
    cursor = cursor or query.get("v")
    one: uuid.UUID | None = None
    if "device" in query:
        try:
            one = uuid.UUID(query["device"])
        except ValueError:
            return Update([], None)
    try:
        devices = await _infos(broker, account_id, one)
    except device_service.DeviceNotFound:
        return Update([], None)
    html = _rows(devices, into=one is None)
    version = _version(html)
    return Update([], None) if version == cursor else Update(html, version)


@page
async def devices_page(request: Request, user: Session) -> Response:
    devices = await _infos(broker_of(request), user.account_id)
    return render(request, "devices.html", user=user, devices=devices,
                  into=BODY_ID, transports=TRANSPORTS,
                  live=f"/dashboard/live?view=devices&v={_version(_rows(devices))}")


@page
async def device_page(request: Request, user: Session) -> Response:
    device_id = _device_id(request)
    [device] = await _infos(broker_of(request), user.account_id, device_id)
    version = _version(_rows([device], into=False))
    return render(request, "devices_edit.html", user=user, d=device, into=None,
                  transports=TRANSPORTS, max_rate=MAX_SEND_RATE, max_name=MAX_NAME_CHARS,
                  live=f"/dashboard/live?view=devices&device={device.id}&v={version}")


# --- adding a phone ------------------------------------------------------------------


def _origin(request: Request) -> str:
    """The broker as a phone should reach it: SMSDORA_PUBLIC_URL, else the
    origin this browser reached, else where `serve` listens."""
    broker = broker_of(request)
    settings = broker.settings
    base = (settings.public_url or request_origin(broker, request)
            or f"http://{settings.host}:{settings.port}")
    return base.rstrip("/")


def _new(request: Request, user: Session, status: int = 200, **shown: object) -> Response:
    settings = broker_of(request).settings
    context: dict[str, object] = {"code": None, "token": None, "device": None, **shown}
    return render(request, "devices_new.html", status, user=user, origin=_origin(request),
                  public_url=settings.public_url, default_rate=settings.default_send_rate,
                  **context)


@page
async def new_page(request: Request, user: Session) -> Response:
    return _new(request, user)


@page
async def make_code(request: Request, user: Session) -> Response:
    """A one-time pairing code (as `POST /devices/codes`), shown once with
    the URL the app is pointed at and a QR code of that URL."""
    broker = broker_of(request)
    code, expires_at = await pairing.make(broker.pool, broker.secret, user.account_id)
    url = pairing.server_url(broker.settings, request_origin(broker, request))
    qr = segno.make(url, error="m").svg_data_uri(scale=6, border=2, dark="#000", light="#fff")
    return _new(request, user, code=code, expires_at=expires_at, server_url=url, qr=qr)


@page
async def register(request: Request, user: Session) -> Response:
    """A WebSocket phone (as `POST /devices`): its token shown once."""
    broker = broker_of(request)
    fields = request.state.form
    name = _name(fields)
    send_rate = _send_rate(fields, None)
    if send_rate is None:
        send_rate = broker.settings.default_send_rate
    async with broker.pool.acquire() as db:
        device, token = await device_service.register(db, broker.secret, user.account_id, name,
                                                      send_rate)
    broker.wake.notify(user.account_id)  # its other devices tabs
    return _new(request, user, 201, device=device, token=token)


def _name(fields: Mapping[str, str]) -> str:
    name = fields.get("name", "").strip()
    if not name:
        raise BadRequest("Give the phone a name")
    if len(name) > MAX_NAME_CHARS:
        raise BadRequest(f"A phone's name is at most {MAX_NAME_CHARS} characters")
    return name


def _send_rate(fields: Mapping[str, str], default: int | None) -> int | None:
    raw = fields.get("send_rate", "").strip()
    if not raw:
        return default
    try:
        rate = int(raw)
    except ValueError:
        raise BadRequest("The send rate is a whole number of SMS per minute") from None
    if not 0 <= rate <= MAX_SEND_RATE:
        raise BadRequest(f"The send rate is from 0 (no limit) to {MAX_SEND_RATE} SMS per minute")
    return rate


# --- changing one --------------------------------------------------------------------


async def _update(request: Request, user: Session, *, name: str | None = None,
                  send_rate: int | None = None, active: bool | None = None) -> Response:
    """As `PATCH /devices/{id}`: the service's update, then this broker's
    hold of a connected phone follows (deactivating drops its connection
    on every broker through store.DEVICE_DEACTIVATED)."""
    broker = broker_of(request)
    device_id = _device_id(request)
    async with broker.pool.acquire() as db:
        row = await device_service.update(db, device_id, user.account_id, name=name,
                                          send_rate=send_rate, active=active)
    device_service.follow(broker.presence, row)
    broker.wake.notify(user.account_id)
    return redirect(f"/dashboard/devices/{row.id}")


@page
async def update(request: Request, user: Session) -> Response:
    fields = request.state.form
    return await _update(request, user, name=_name(fields), send_rate=_send_rate(fields, None))


@page
async def deactivate(request: Request, user: Session) -> Response:
    return await _update(request, user, active=False)


@page
async def reactivate(request: Request, user: Session) -> Response:
    return await _update(request, user, active=True)


ROUTES: list[BaseRoute] = [
    Route("/dashboard/devices", devices_page, methods=["GET"]),
    Route("/dashboard/devices/new", new_page, methods=["GET"]),
    Route("/dashboard/devices/new", register, methods=["POST"]),
    Route("/dashboard/devices/code", make_code, methods=["POST"]),
    Route("/dashboard/devices/{device_id}", device_page, methods=["GET"]),
    Route("/dashboard/devices/{device_id}", update, methods=["POST"]),
    Route("/dashboard/devices/{device_id}/deactivate", deactivate, methods=["POST"]),
    Route("/dashboard/devices/{device_id}/reactivate", reactivate, methods=["POST"]),
]
