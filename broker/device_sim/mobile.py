"""The SMS Gateway for Android app's side of the wire (shared/SMSGATE.md
sections 2, 4, 5), pure: its JSON as it reads and writes it, its dates, and
OkHttp's reader of the event stream. `app.AppPhone` decides, `smsgate.AppSim`
does the I/O."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

# What the app sends as itself (SMSGATE.md 1.1, 5.1): ktor for the API, a
# plain OkHttp client for the event stream.
USER_AGENT: Final = "me.capcom.smsgateway/1.68.0"
SSE_USER_AGENT: Final = "okhttp/4.10.0"
BASE_PATH: Final = "/api/mobile/v1"

# The reconnect schedule of the app's event stream (SMSGATE.md 5.1, on a
# failure and on a normal close; the count resets on a successful open).
APP_RECONNECT_S: Final = (5.0,) * 5 + (30.0,) * 5 + (60.0,)

# Dates the app reads right: 0 or 3 fractional digits (SMSGATE.md 4.6.3).
APP_DATE: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?(Z|[+-]\d\d:\d\d)$")


def mobile_base(url: str) -> str:
    """The base URL the app is given: `http://host:port` gets the mobile
    API's path; a URL with a path is taken as the base itself (without a
    trailing slash: the app appends `/device` and so on)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") or BASE_PATH, "", ""))


def app_reconnect_s(attempt: int) -> float:
    """The app's wait before reconnect `attempt` (0 = the first)."""
    return APP_RECONNECT_S[min(attempt, len(APP_RECONNECT_S) - 1)]


def app_date(t: dt.datetime) -> str:
    """`yyyy-MM-dd'T'HH:mm:ss.SSSXXX` in the time's own zone, as the app
    writes dates (XXX says `Z` for UTC)."""
    text = t.isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class SimCard(msgspec.Struct, frozen=True, omit_defaults=True):
    slotIndex: int
    simNumber: int
    carrierName: str | None = None


class DeviceRegister(msgspec.Struct, frozen=True, omit_defaults=True):
    """`POST /device` (4.1): no `pushToken` in the app's SSE Only mode."""

    name: str
    simCards: list[SimCard]


class DeviceUpdate(msgspec.Struct, frozen=True, omit_defaults=True):
    """`PATCH /device` (4.2), at every start."""

    id: str
    simCards: list[SimCard]


class Registered(msgspec.Struct, frozen=True):
    id: str
    token: str
    login: str
    password: str | None = None


class TextMessage(msgspec.Struct, frozen=True):
    text: str


class DataMessage(msgspec.Struct, frozen=True):
    data: str
    port: int


class Listed(msgspec.Struct, frozen=True):
    """One item of `GET /message` (4.6.1): the fields the app reads."""

    id: str
    phoneNumbers: list[str]
    message: str | None = None
    textMessage: TextMessage | None = None
    dataMessage: DataMessage | None = None
    withDeliveryReport: bool = True
    validUntil: str | None = None
    createdAt: str | None = None
    state: str | None = None  # absent or unknown: Pending


class RecipientState(msgspec.Struct, frozen=True, omit_defaults=True):
    phoneNumber: str
    state: str
    error: str | None = None  # only with Failed; Gson leaves nulls out


class MessagePatch(msgspec.Struct, frozen=True, omit_defaults=True):
    """One item of `PATCH /message` (4.7): the job's full snapshot."""

    id: str
    state: str
    recipients: list[RecipientState]
    states: dict[str, str]


WebhookEvent = Literal["sms:received", "sms:sent", "sms:delivered", "sms:failed", "system:ping",
                       "sms:data-received", "mms:received", "mms:downloaded", "app:started",
                       "sms:cancelled"]


class WebHook(msgspec.Struct, frozen=True):
    """One item of `GET /webhooks` (4.8): only the app's own events."""

    id: str
    url: str
    event: WebhookEvent


class SmsReceived(msgspec.Struct, frozen=True, omit_defaults=True):
    """The `sms:received` payload (SMSGATE.md 8.3): `messageId` is a hash of
    the SMS, not unique; `phoneNumber` the deprecated copy of `sender`."""

    messageId: str
    message: str
    sender: str
    receivedAt: str
    phoneNumber: str
    simNumber: int | None = None
    recipient: str | None = None


class WebHookEvent(msgspec.Struct, frozen=True):
    """What the app POSTs to a webhook (SMSGATE.md 8.2): a new `id` per
    delivery, the webhook's id, its own device id."""

    id: str
    webhookId: str
    event: str
    deviceId: str
    payload: SmsReceived


def sign(key: str, body: bytes, timestamp: str) -> str:
    """`X-Signature` as the app's PayloadSingingPlugin computes it: hex
    HMAC-SHA256 keyed with the UTF-8 of `webhooks.signing_key`, of the body's
    text followed by `X-Timestamp` (unix seconds)."""
    return hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


SIM_CARDS: Final = [SimCard(slotIndex=0, simNumber=1, carrierName="device-sim")]
listing_decoder: Final = msgspec.json.Decoder(list[Listed])
registered_decoder: Final = msgspec.json.Decoder(Registered)
settings_decoder: Final = msgspec.json.Decoder(dict[str, dict[str, Any]])
webhooks_decoder: Final = msgspec.json.Decoder(list[WebHook])
_encoder: Final = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    return _encoder.encode(value)


@dataclass(frozen=True)
class SseEvent:
    name: str
    data: str


class SseParser:
    """OkHttp's ServerSentEventReader (SMSGATE.md 5.1): lines end with CR,
    LF or CRLF; an event is dispatched at a blank line only if a `data` line
    was seen; `:` lines are comments; no `event:` line means MessageEnqueued."""

    def __init__(self) -> None:
        self._buffer = ""
        self._after_cr = False  # the last text ended with CR: an LF next is its CRLF
        self._name: str | None = None
        self._data: list[str] | None = None
        self.comments = 0

    def feed(self, text: str) -> list[SseEvent]:
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        *lines, self._buffer = re.split(r"\r\n|\r|\n", self._buffer + text)
        events: list[SseEvent] = []
        for line in lines:
            if line == "":
                if self._data is not None:
                    events.append(SseEvent(self._name or "MessageEnqueued", "\n".join(self._data)))
                self._name, self._data = None, None
            elif line.startswith(":"):
                self.comments += 1
            else:
                key, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if key == "event":
                    self._name = value
                elif key == "data":
                    self._data = [*(self._data or []), value]
        return events
