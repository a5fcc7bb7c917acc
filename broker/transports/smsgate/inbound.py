"""Inbound SMS from the SMS Gateway for Android app (contract sections 8, 9;
shared/SMSGATE.md 6.9, 8): the app forwards every SMS it receives to the
webhooks `GET /webhooks` lists, and the broker lists one of its own,
`POST {base}/inbound/{device_id}`, for `sms:received`.

The app sends no device token on a webhook: the URL names the device, and
the body is signed with the per-device key the broker handed out in `GET
/settings` (`keys.signing_key`): `X-Signature` is the hex HMAC-SHA256 of the
raw body followed by `X-Timestamp` (unix seconds), as the app's
PayloadSingingPlugin computes it. The key is derived from the device id, so
a forgery is refused before any query; a timestamp more than 5 minutes from
now is refused too (contract section 8), so a captured request cannot be
replayed later. Each attempt of the app is signed anew.

The SMS is stored once per (device, the app's `messageId` and `receivedAt`):
the app's retries and its duplicate deliveries (SMSGATE.md 13: the same
`messageId`, another envelope `id`) are stored once, fire one event, and are
answered 2xx like the first, after the commit."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker import keys, store
from broker.errors import BadRequest, NotFound, Unauthorized
from broker.http import auth as http_auth
from broker.http.responses import bare, decode, read_body

if TYPE_CHECKING:
    from broker.runtime import Broker

EVENT: Final = "sms:received"
WEBHOOK_ID: Final = "smsdora-sms-received"  # unique among the phone's webhooks
INBOUND_PATH: Final = "/inbound"
MAX_SKEW_S: Final = 300  # contract section 8: a timestamp older than 5 minutes is refused

_NO_NUL = "^[^\x00]*$"


class WebHook(msgspec.Struct, frozen=True):
    """One item of `GET /webhooks` (SMSGATE.md 4.8)."""

    id: str
    url: str
    event: str
    deviceId: str | None = None


class SmsReceived(msgspec.Struct, frozen=True):
    """The `sms:received` payload (SMSGATE.md 8.3; unknown fields ignored).
    `phoneNumber` is the deprecated copy of `sender`."""

    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_NO_NUL)]
    receivedAt: Annotated[str, msgspec.Meta(max_length=64)]
    message: Annotated[str, msgspec.Meta(max_length=10_000, pattern=_NO_NUL)] = ""
    sender: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_NO_NUL)] | None = None
    phoneNumber: Annotated[str, msgspec.Meta(max_length=128, pattern=_NO_NUL)] | None = None
    simNumber: int | None = None


class WebhookEvent(msgspec.Struct, frozen=True):
    """The app's envelope (SMSGATE.md 8.2). `deviceId` is not trusted: the
    URL and its signature name the device."""

    event: str
    payload: SmsReceived
    id: str = ""
    webhookId: str = ""
    deviceId: str | None = None


_event_decoder = msgspec.json.Decoder(WebhookEvent)


# --- the URL the phone is told ---------------------------------------------------

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")


def inbound_url(broker: Broker, request: Request, device_id: uuid.UUID) -> str:
    """The broker's inbound URL for this phone, at the base the app called
    (`GET {base}/webhooks`): what it demonstrably reaches. Its origin is
    `request_origin`'s; a request without a usable Host gets
    SMSDORA_PUBLIC_URL, else the listening address."""
    path = request.scope["path"]
    base_path = path[:path.rfind("/webhooks")].rstrip("/")  # "//webhooks": a trailing slash
    base = request_origin(broker, request)
    if base is None:
        settings = broker.settings
        base = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    return f"{base}{base_path}{INBOUND_PATH}/{device_id}"


def request_origin(broker: Broker, request: Request) -> str | None:
    """`scheme://host` as the client reached us: the connection's scheme,
    or behind a trusted proxy (SMSDORA_TRUSTED_PROXIES) the
    `X-Forwarded-Proto` that proxy sent; the `Host` the client sent (or,
    behind a trusted proxy, `X-Forwarded-Host`). None without a usable Host."""
    headers = request.headers
    scheme, host = request.scope.get("scheme", "http"), headers.get("host", "")
    if _from_trusted_proxy(broker, request):
        proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = headers.get("x-forwarded-host", "").split(",")[0].strip()
        if forwarded_host:
            host = forwarded_host
    if scheme not in ("http", "https"):
        scheme = "https" if scheme == "wss" else "http"
    return f"{scheme}://{host}" if _HOST.match(host) else None


def _from_trusted_proxy(broker: Broker, request: Request) -> bool:
    """The peer is one of SMSDORA_TRUSTED_PROXIES (broker/http/client.py):
    only then are its X-Forwarded-* headers believed."""
    client = request.scope.get("client")
    try:
        peer = ipaddress.ip_address(client[0]) if client else None
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer is not None and any(peer in net for net in broker.settings.trusted_proxies)


def webhooks_for(broker: Broker, request: Request, device: store.DeviceRow) -> list[WebHook]:
    """`GET /webhooks`: the broker's own `sms:received` URL for this phone."""
    return [WebHook(id=WEBHOOK_ID, url=inbound_url(broker, request, device.id), event=EVENT,
                    deviceId=str(device.id))]


# --- the signed POST ---------------------------------------------------------------


def signature(key: str, body: bytes, timestamp: str) -> str:
    """What the app puts in `X-Signature`: hex HMAC-SHA256, keyed with the
    UTF-8 of the signing key, of the body's bytes followed by the timestamp."""
    return hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def _verify(broker: Broker, request: Request, device_id: uuid.UUID, body: bytes) -> None:
    """401 unless the body is signed with this device's key, at a time
    within MAX_SKEW_S of now."""
    given = request.headers.get("x-signature", "").strip().lower()
    stamp = request.headers.get("x-timestamp", "").strip()
    if not given or not stamp:
        raise Unauthorized("Missing X-Signature or X-Timestamp")
    expected = signature(keys.signing_key(broker.secret, str(device_id)), body, stamp)
    # Constant time: compare_digest on ASCII strings of any length.
    if not given.isascii() or not hmac.compare_digest(given, expected):
        raise Unauthorized("Invalid X-Signature")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise Unauthorized("X-Timestamp must be unix seconds")
    if abs(time.time() - int(stamp)) > MAX_SKEW_S:
        raise Unauthorized(f"Stale X-Timestamp: more than {MAX_SKEW_S} s from the broker's"
                           " clock (is the phone's clock right?)")


async def receive(request: Request) -> Response:
    """`POST {base}/inbound/{device_id}`: an `sms:received` webhook of the app."""
    broker: Broker = request.app.state.broker
    try:
        device_id = uuid.UUID(request.path_params["device_id"])
    except ValueError:
        raise NotFound("Not Found") from None
    body = await read_body(request)
    address, now = http_auth.address_of(request), time.monotonic()
    taken = http_auth.check_throttle(broker, address, now)
    try:
        _verify(broker, request, device_id, body)
    except Unauthorized:
        http_auth.failed(broker, address, taken)
        raise
    http_auth.passed(broker, address, taken)
    hook: WebhookEvent = decode(_event_decoder, body)
    if hook.event != EVENT:
        raise BadRequest(f"event must be {EVENT}: this URL takes received SMS only")
    sms = hook.payload
    sender = sms.sender or sms.phoneNumber
    if not sender:
        raise BadRequest("payload.sender is missing")
    received_at = app_time(sms.receivedAt)
    if received_at is None:
        raise BadRequest("payload.receivedAt is not a date")
    sim = sms.simNumber if sms.simNumber is not None and 1 <= sms.simNumber <= 16 else None
    # The app's messageId is a 32-bit hash of the SMS (sender, time, SIM,
    # text): the same for every delivery of one SMS, but two SMS may share
    # it. With the time it names one SMS.
    phone_id = f"{sms.messageId}@{int(received_at.timestamp() * 1000)}"
    received = await store.insert_inbound(broker.pool, device_id, store.SMSGATE, phone_id, sender,
                                          sms.message, sim, received_at)
    if received is None:
        raise Unauthorized("Device unknown or deactivated")
    _seen(broker, device_id)
    if received.inserted:
        broker.wake.poke(received.account_id)  # committed: the webhook sender looks now
    return bare({})


def _seen(broker: Broker, device_id: uuid.UUID) -> None:
    """A request of the phone: its last-seen moves (contract section 8)."""
    conn = broker.presence.get(device_id)
    if conn is not None:
        broker.presence.touch(conn)
    else:
        broker.presence.seen_away(device_id)


# --- the app's dates ---------------------------------------------------------------

_APP_TIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
    r"(Z|[+-]\d\d:?\d\d|\+-\d{1,2}:-?\d{1,2})?$")


def app_time(text: str) -> dt.datetime | None:
    """A date as the app writes it (`yyyy-MM-dd'T'HH:mm:ss.SSSXXX`, SMSGATE.md
    2), leniently: Android 5-6 write a negative offset as `+-5:00` (or
    `+-3:-30`); without an offset, UTC. None if it is no date."""
    m = _APP_TIME.match(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        zone = _zone(offset)
        return dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                           micro, tzinfo=zone)
    except ValueError:  # the 31st of February, an hour 25, an offset of a day or more
        return None


def _zone(offset: str | None) -> dt.timezone:
    if offset is None or offset == "Z":
        return dt.UTC
    if offset.startswith("+-"):  # Android 5-6: "+-5:00", "+-3:-30"
        hours, _, minutes = offset[2:].partition(":")
        return dt.timezone(-dt.timedelta(hours=int(hours), minutes=abs(int(minutes))))
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    return dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
