"""The mobile API of the SMS Gateway for Android app (contract section 8,
shared/SMSGATE.md section 3): registration, the device, settings, webhooks,
login codes and the password here; the jobs in messages.py, the event
stream in events.py, the SMS the phone receives in inbound.py. Mounted at `/api/mobile/v1` and `/mobile/v1`.

Answers are the app's own JSON (shapes.py) with `application/json`, never
an empty body; errors are the contract's error shape (the app looks only at
the status)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from broker import keys, store
from broker.clock import iso
from broker.errors import BadRequest, Forbidden, Unauthorized
from broker.http import auth as http_auth
from broker.http.responses import bare, decode, read_body
from broker.services import devices as device_service
from broker.services import pairing, passwords
from broker.transports.smsgate import auth, events, inbound, messages, shapes

if TYPE_CHECKING:
    from broker.runtime import Broker

PREFIXES = ("/api/mobile/v1", "/mobile/v1")


async def register_device(request: Request) -> Response:
    """`POST /device`: a new phone of the account the credentials name."""
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    # The body first: a one-time code is used up by the check, and a phone
    # whose request is refused for its body must still be able to use it.
    req: shapes.RegisterRequest = decode(shapes.register_decoder, body)
    account = await auth.account_to_register_into(request)
    async with broker.pool.acquire() as db:
        device, token = await device_service.register(
            db, broker.secret, account.id, req.name, broker.settings.default_send_rate,
            store.SMSGATE, req.pushToken, shapes.sim_cards_json(req.simCards))
    return bare(shapes.Registered(id=str(device.id), token=token, login=account.email), 201)


async def update_device(request: Request) -> Response:
    """`PATCH /device`, at every start of the app: a 401 here is what makes
    it register again, so an unknown token must be one."""
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    device = await auth.device_of(request)
    req: shapes.DeviceUpdate = decode(shapes.update_decoder, body)
    if req.id != str(device.id):
        raise Forbidden("Not this device's id")
    await store.update_app_info(broker.pool, device.id, req.pushToken,
                                shapes.sim_cards_json(req.simCards))
    return bare({})


async def get_device(request: Request) -> Response:
    """`GET /device`: the app reads only the address it is seen from."""
    await auth.device_of(request)
    return bare(shapes.ExternalIp(externalIp=request.client.host if request.client else ""))


async def get_settings(request: Request) -> Response:
    """`GET /settings` (SMSGATE.md 4.9): SSE only (no Firebase), the device's
    send rate as the app's own limit, and the key it signs its webhooks with.
    Never `gateway.cloud_url`: the app would switch servers."""
    broker: Broker = request.app.state.broker
    device = await auth.device_of(request)
    messages: dict[str, Any] = (
        {"limit_period": "PerMinute", "limit_value": device.send_rate}
        if device.send_rate > 0 else {"limit_period": "Disabled"})
    return bare({
        "gateway": {"notification_channel": "SSE_ONLY"},
        "messages": messages,
        "webhooks": {"signing_key": keys.signing_key(broker.secret, str(device.id))},
    })


async def get_webhooks(request: Request) -> Response:
    """`GET /webhooks`: the broker's own URL for `sms:received`, where the
    app forwards every SMS the phone receives (inbound.py). Only an event of
    the app's own list: another would fail its whole sync (SMSGATE.md 4.8)."""
    device = await auth.device_of(request)
    return bare(inbound.webhooks_for(request.app.state.broker, request, device))


async def get_user_code(request: Request) -> Response:
    """`GET /user/code` with `Basic email:password`: a one-time code another
    phone registers with ("By code")."""
    broker: Broker = request.app.state.broker
    account = await auth.account_by_password(request)
    code = await pairing.make(broker.pool, broker.secret, account.id)
    # 0 or 3 fractional digits: the only ones the app parses right (SMSGATE.md 4.6.3).
    return bare(shapes.UserCode(code=code.code, validUntil=iso(code.expires_at) or ""))


async def change_password(request: Request) -> Response:
    """`PATCH /user/password`: the account's password, from its phone."""
    broker: Broker = request.app.state.broker
    body = await read_body(request)
    device = await auth.device_of(request)
    req: shapes.PasswordChange = decode(shapes.password_decoder, body)
    # Guessing the current password is throttled like a sign-in: per
    # address, and per account from every address together.
    now = time.monotonic()
    address = http_auth.address_of(request)
    taken = http_auth.check_throttle(broker, address, now)
    account_taken = http_auth.check_login(broker, f"account:{device.account_id}", now)
    if not await passwords.verify(await store.password_hash(broker.pool, device.account_id),
                                  req.currentPassword):
        http_auth.failed(broker, address, taken)
        if not account_taken:
            broker.login_failures.charge(f"account:{device.account_id}", time.monotonic())
        raise Unauthorized("Wrong current password")
    http_auth.passed(broker, address, taken)
    if account_taken:
        broker.login_failures.refund(f"account:{device.account_id}")
    if len(req.newPassword) < passwords.MIN_LENGTH:
        raise BadRequest(f"newPassword must be at least {passwords.MIN_LENGTH} characters")
    await store.set_password(broker.pool, device.account_id,
                             await passwords.hash_password(req.newPassword))
    return bare({})


_ROUTES = [
    Route("/device", register_device, methods=["POST"], name="smsgate_register_device"),
    Route("/device", update_device, methods=["PATCH"], name="smsgate_update_device"),
    Route("/device", get_device, methods=["GET"], name="smsgate_get_device"),
    Route("/message", messages.list_messages, methods=["GET"], name="smsgate_list_messages"),
    Route("/message", messages.report_messages, methods=["PATCH"],
          name="smsgate_report_messages"),
    # The reference server's alias, answered the same.
    Route("/messages", messages.list_messages, methods=["GET"], name="smsgate_list_messages"),
    Route("/messages", messages.report_messages, methods=["PATCH"],
          name="smsgate_report_messages"),
    Route("/events", events.events, methods=["GET"], name="smsgate_events"),
    Route("/settings", get_settings, methods=["GET"]),
    Route("/webhooks", get_webhooks, methods=["GET"]),
    Route(inbound.INBOUND_PATH + "/{device_id}", inbound.receive, methods=["POST"],
          name="smsgate_inbound"),
    Route("/user/code", get_user_code, methods=["GET"]),
    Route("/user/password", change_password, methods=["PATCH"]),
]


# The app builds every URL as "$base/<path>", so a base typed with a trailing
# slash calls "//device" (SMSGATE.md 1.2): answered the same.
_DOUBLED = [Route("/" + r.path, r.endpoint, methods=sorted(r.methods or ()), name=r.name)
            for r in _ROUTES]


def routes() -> list[BaseRoute]:
    """The mobile API under each of its prefixes."""
    return [Mount(prefix, routes=[*_ROUTES, *_DOUBLED]) for prefix in PREFIXES]
