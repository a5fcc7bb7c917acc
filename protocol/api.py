"""HTTP request and response bodies of the client API (contract section 3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

MAX_BODY_BYTES = 64 * 1024
MAX_TTL_S = 7 * 24 * 3600

# `devices:register`: the key an SMS Gateway app types as its "Private Token"
# to register itself into the account (contract section 8); nothing else.
SCOPES = ("messages:send", "messages:read", "devices:read", "devices:write", "keys:write",
          "devices:register", "webhooks:write")


class SendRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    recipient: str
    message: str
    ttl: Annotated[int, msgspec.Meta(gt=0, le=MAX_TTL_S)] | None = None


class DeviceRef(msgspec.Struct, frozen=True):
    id: str
    deviceName: str


class MessageData(msgspec.Struct, frozen=True):
    id: str
    recipient: str
    message: str
    status: str
    device: DeviceRef | None


class SendResponse(msgspec.Struct, frozen=True):
    statusCode: int
    message: str
    data: MessageData


class HistoryEntry(msgspec.Struct, frozen=True):
    status: str
    at: str


class MessageDetail(msgspec.Struct, frozen=True):
    id: str
    recipient: str
    message: str
    status: str
    device: DeviceRef | None
    error: str | None
    createdAt: str
    history: list[HistoryEntry] = []


class DeviceHealth(msgspec.Struct, frozen=True, omit_defaults=True):
    battery: int | None = None
    charging: bool | None = None
    signal: int | None = None


class DeviceInfo(msgspec.Struct, frozen=True):
    id: str
    deviceName: str
    online: bool
    lastSeen: str | None
    active: bool
    sendRate: int
    health: DeviceHealth | None = None
    appVersion: str | None = None
    transport: str = "websocket"  # or "smsgate": the SMS Gateway for Android app


class CreateDeviceRequest(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    sendRate: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None  # None: the default


class CreatedDevice(msgspec.Struct, frozen=True):
    id: str
    deviceName: str
    token: str
    sendRate: int


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    statusCode: int
    data: Any
    nextCursor: str | None = None


class HealthBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """`GET /health` (contract section 3, Operations); 503 when degraded.
    For anyone, `status` and `database` only; the rest on the metrics
    listener or with the metrics token (section 12)."""

    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    node: str | None = None
    devicesOnline: int | None = None
    uptimeSeconds: int | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    statusCode: int
    message: str
    error: str


encoder = msgspec.json.Encoder()
send_request_decoder = msgspec.json.Decoder(SendRequest)
create_device_decoder = msgspec.json.Decoder(CreateDeviceRequest)
