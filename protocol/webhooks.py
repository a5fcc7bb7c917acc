"""The webhook routes' bodies (CONTRACT section 9), declared once: the
handlers decode and encode these, and /openapi.json is made from them."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

EVENT_TYPES = ("message.queued", "message.dispatching", "message.sending", "message.sent",
               "message.delivered", "message.failed", "message.received", "device.online",
               "device.offline")
ALL = "*"
TEST_EVENT = "webhook.test"

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Events = Annotated[list[str], msgspec.Meta(min_length=1, max_length=len(EVENT_TYPES) + 1)]
Description = Annotated[str, msgspec.Meta(max_length=200)]


class CreateWebhookRequest(msgspec.Struct, frozen=True):
    url: Url
    events: Events
    description: Description = ""


class UpdateWebhookRequest(msgspec.Struct, frozen=True):
    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: bool | None = None


class WebhookInfo(msgspec.Struct, frozen=True):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    # Why the broker disabled it (410, no 2xx for 5 days) or "disabled by the account".
    disabledReason: str | None
    createdAt: str
    updatedAt: str
    # After a rotation: until when the previous secret signs too.
    previousSecretUntil: str | None = None


class CreatedWebhook(msgspec.Struct, frozen=True):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    createdAt: str
    secret: str  # `whsec_…`, shown only in this response


class RotatedSecret(msgspec.Struct, frozen=True):
    id: str
    secret: str  # the new one, shown only in this response
    previousSecretUntil: str


class Delivery(msgspec.Struct, frozen=True):
    eventId: str  # the `webhook-id` header, what POST /events/{id}/redeliver takes
    type: str
    attempt: int
    statusCode: int | None
    error: str | None
    at: str
    nextRetryAt: str | None


class RecoverRequest(msgspec.Struct, frozen=True):
    since: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Recovered(msgspec.Struct, frozen=True):
    recovered: int  # events owed again


class Queued(msgspec.Struct, frozen=True):
    eventId: str
    webhookId: str


class EventBody(msgspec.Struct, frozen=True):
    """What every delivery POSTs (for the document; the sender writes it)."""

    type: str
    timestamp: str
    data: dict[str, Any]
