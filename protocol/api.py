"""HTTP request and response bodies of the client API (contract section 3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec

MAX_BODY_BYTES = 64 * 1024
MAX_TTL_S = 7 * 24 * 3600

# `devices:register`: the key an SMS Gateway app types as its "Private Token"
# to register itself into the account (contract section 8); nothing else.
Scope = Literal["messages:send", "messages:read", "devices:read", "devices:write", "keys:write",
                "devices:register", "webhooks:write"]
SCOPES: tuple[str, ...] = get_args(Scope)


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


# --- the management API (contract section 10) ---------------------------------

MAX_NAME_CHARS = 100
# What one key may wait before it expires, and its per-minute limit: ten
# years and a million, bounds that only keep the numbers sane.
MAX_EXPIRES_IN_S = 10 * 365 * 24 * 3600
MAX_RATE_LIMIT = 1_000_000


class MessageItem(msgspec.Struct, frozen=True):
    """One message of `GET /messages`: the send's shape, with its error and
    when it was accepted."""

    id: str
    recipient: str
    message: str
    status: str
    device: DeviceRef | None
    error: str | None
    createdAt: str


class CreateKeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)] = ""
    # Empty or left out: `messages:send`, as `smsdora keys create`.
    scopes: Annotated[list[Scope], msgspec.Meta(max_length=len(SCOPES))] = []
    rateLimit: Annotated[int, msgspec.Meta(ge=1, le=MAX_RATE_LIMIT)] | None = None
    expiresIn: Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPIRES_IN_S)] | None = None


class IssuedKey(msgspec.Struct, frozen=True):
    """A key with its secret (`key`), shown once: what `smsdora keys create
    --json` prints; `POST /keys/{id}/rotate` answers the same."""

    id: str
    key: str
    prefix: str
    name: str
    scopes: list[str]
    rateLimit: int | None
    expiresAt: str | None


class KeyInfo(msgspec.Struct, frozen=True):
    """A key without its secret (as `smsdora keys list --json`)."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    rateLimit: int | None
    expiresAt: str | None
    revoked: bool
    createdAt: str
    # When the key was last accepted: noted at most once a minute per broker
    # node and written a few seconds later, so it can lag that much.
    lastUsedAt: str | None


class UpdateDeviceRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`PATCH /devices/{id}`: what is left out stays as it is."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)] | \
        msgspec.UnsetType = msgspec.UNSET
    sendRate: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class DeviceToken(msgspec.Struct, frozen=True):
    """`POST /devices/{id}/rotate-token`: the new token, shown once."""

    id: str
    deviceName: str
    token: str


class PairingCode(msgspec.Struct, frozen=True):
    """`POST /devices/codes`: what the SMS Gateway app's "By code" takes
    (contract section 8), as `smsdora devices code --json` prints it."""

    code: str
    validUntil: str
    serverUrl: str


class PlanInfo(msgspec.Struct, frozen=True):
    name: str
    monthlyMessages: int
    maxDevices: int


class UsageInfo(msgspec.Struct, frozen=True):
    month: str  # `2026-12`, UTC
    messages: int
    limit: int


class DevicesUsed(msgspec.Struct, frozen=True):
    active: int  # what the plan's device limit counts
    limit: int


class AccountInfo(msgspec.Struct, frozen=True):
    id: str
    email: str
    plan: PlanInfo
    usage: UsageInfo
    devices: DevicesUsed


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
create_key_decoder = msgspec.json.Decoder(CreateKeyRequest)
update_device_decoder = msgspec.json.Decoder(UpdateDeviceRequest)
