"""The webhook routes of the client API (CONTRACT section 9). Scope
`webhooks:write` for every one, reads included: an endpoint's URL and
deliveries say where the account's events go."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from broker.clock import iso
from broker.http.auth import authenticate
from broker.http.declaration import Endpoint, Wrap
from broker.http.params import Cursor, Integer, PathId, Position
from broker.http.responses import decode, ok, read_body
from broker.services import webhooks as service
from broker.store import webhooks as outbox
from protocol.webhooks import (
    CreatedWebhook,
    CreateWebhookRequest,
    Delivery,
    Queued,
    Recovered,
    RecoverRequest,
    RotatedSecret,
    UpdateWebhookRequest,
    WebhookInfo,
)

if TYPE_CHECKING:
    from broker.runtime import Broker

SCOPE = "webhooks:write"
WEBHOOK_ID = PathId("webhook_id", "The webhook's id.", not_found="Webhook not found")
EVENT_ID = PathId("event_id", "The event's id: its `webhook-id` header, a delivery's `eventId`.",
                  not_found="Event not found")
LIMIT = Integer("limit", "At most this many (default 20).", low=1, high=100, default=20)
CURSOR = Cursor("cursor", "The `nextCursor` of the previous page.", high=2**62)
WEBHOOKS_CURSOR = Position("cursor", "The `nextCursor` of the previous page.")
_ATTEMPT_BITS = 16  # a deliveries cursor: the event's seq and the attempt, in one integer

_create = msgspec.json.Decoder(CreateWebhookRequest)
_update = msgspec.json.Decoder(UpdateWebhookRequest)
_recover = msgspec.json.Decoder(RecoverRequest)


def info(row: outbox.WebhookRow) -> WebhookInfo:
    return WebhookInfo(id=str(row.id), url=row.url, events=row.events,
                       description=row.description, enabled=row.enabled,
                       disabledReason=row.disabled_reason, createdAt=iso(row.created_at) or "",
                       updatedAt=iso(row.updated_at) or "",
                       previousSecretUntil=iso(row.previous_until))


def _broker(request: Request) -> Broker:
    return request.app.state.broker  # type: ignore[no-any-return]


async def create_webhook(request: Request) -> Response:
    broker = _broker(request)
    body = await read_body(request)
    key = await authenticate(request, SCOPE)
    req = decode(_create, body)
    async with broker.pool.acquire() as db:
        row, secret = await service.create(db, key.account_id, req.url, req.events,
                                           req.description,
                                           broker.settings.webhook_allow_private)
    broker.wake.accounts = broker.wake.accounts | {key.account_id}
    return ok(CreatedWebhook(id=str(row.id), url=row.url, events=row.events,
                             description=row.description, enabled=row.enabled,
                             createdAt=iso(row.created_at) or "", secret=secret), status=201)


async def list_webhooks(request: Request) -> Response:
    broker = _broker(request)
    key = await authenticate(request, SCOPE)
    limit = LIMIT.read(request.query_params)
    after = WEBHOOKS_CURSOR.read(request.query_params)
    rows, more = await service.page(broker.pool, key.account_id, limit, after)
    return ok([info(r) for r in rows],
              next_cursor=Position.of(rows[-1].created_at, rows[-1].id) if more else None)


async def get_webhook(request: Request) -> Response:
    broker = _broker(request)
    key = await authenticate(request, SCOPE)
    webhook_id = WEBHOOK_ID.read(request.path_params)
    return ok(info(await service.get(broker.pool, key.account_id, webhook_id)))


async def update_webhook(request: Request) -> Response:
    broker = _broker(request)
    body = await read_body(request)
    key = await authenticate(request, SCOPE)
    webhook_id = WEBHOOK_ID.read(request.path_params)
    req = decode(_update, body)
    async with broker.pool.acquire() as db:
        row = await service.update(db, key.account_id, webhook_id, req.url, req.events,
                                   req.description, req.enabled,
                                   broker.settings.webhook_allow_private)
    if row.enabled:
        broker.wake.accounts = broker.wake.accounts | {key.account_id}
        broker.wake.poke_now(key.account_id)  # enabled again: what it is owed goes now
    return ok(info(row))


async def delete_webhook(request: Request) -> Response:
    broker = _broker(request)
    key = await authenticate(request, SCOPE)
    webhook_id = WEBHOOK_ID.read(request.path_params)
    await service.delete(broker.pool, key.account_id, webhook_id)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    broker = _broker(request)
    key = await authenticate(request, SCOPE)
    webhook_id = WEBHOOK_ID.read(request.path_params)
    row, secret = await service.rotate_secret(broker.pool, key.account_id, webhook_id)
    return ok(RotatedSecret(id=str(row.id), secret=secret,
                            previousSecretUntil=iso(row.previous_until) or ""))


async def list_deliveries(request: Request) -> Response:
    broker = _broker(request)
    key = await authenticate(request, SCOPE)
    webhook_id = WEBHOOK_ID.read(request.path_params)
    q = request.query_params
    limit = LIMIT.read(q)
    cursor = CURSOR.read(q)
    before = (None if cursor is None
              else (cursor >> _ATTEMPT_BITS, cursor & ((1 << _ATTEMPT_BITS) - 1)))
    rows = await service.deliveries(broker.pool, key.account_id, webhook_id, limit + 1, before)
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return ok([Delivery(eventId=str(r.event_id), type=r.type, attempt=r.attempt,
                        statusCode=r.status_code, error=r.error, at=iso(r.at) or "",
                        nextRetryAt=iso(r.next_retry_at)) for r in rows],
              next_cursor=(str((last.event_seq << _ATTEMPT_BITS) | last.attempt)
                           if more and last is not None else None))


async def test_webhook(request: Request) -> Response:
    broker = _broker(request)
    key = await authenticate(request, SCOPE)
    webhook_id = WEBHOOK_ID.read(request.path_params)
    event_id = await service.send_test(broker.pool, key.account_id, webhook_id)
    broker.wake.poke_now(key.account_id)
    return ok(Queued(eventId=str(event_id), webhookId=str(webhook_id)), status=202)


async def redeliver_event(request: Request) -> Response:
    broker = _broker(request)
    key = await authenticate(request, SCOPE)
    event_id = EVENT_ID.read(request.path_params)
    replayed = await service.redeliver(broker.pool, key.account_id, event_id)
    broker.wake.poke_now(key.account_id)
    return ok(Queued(eventId=str(replayed.event_id), webhookId=str(replayed.webhook_id)),
              status=202)


async def recover_webhook(request: Request) -> Response:
    broker = _broker(request)
    body = await read_body(request)
    key = await authenticate(request, SCOPE)
    webhook_id = WEBHOOK_ID.read(request.path_params)
    req = decode(_recover, body)
    n = await service.recover(broker.pool, key.account_id, webhook_id,
                              service.parse_since(req.since))
    broker.wake.poke_now(key.account_id)
    return ok(Recovered(recovered=n), status=202)


_ONE = (401, 403, 404, 405)
WEBHOOK_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST", "/webhooks", create_webhook, "createWebhook",
        "Send the account's events to a URL; its signing secret is shown only here",
        "The webhook and its secret (`whsec_…`).", scope=SCOPE, status=201,
        body=CreateWebhookRequest,
        example=CreateWebhookRequest(url="https://example.com/smsdora",
                                     events=["message.delivered", "message.failed"]),
        response=CreatedWebhook, wrap=Wrap.ONE, errors=(400, 401, 403, 405, 409, 413)),
    Endpoint(
        "GET", "/webhooks", list_webhooks, "listWebhooks", "The account's webhooks",
        "A page, oldest first; `nextCursor` is there when more follow.", scope=SCOPE,
        params=(LIMIT, WEBHOOKS_CURSOR), response=WebhookInfo, wrap=Wrap.LIST,
        errors=(400, 401, 403, 405)),
    Endpoint(
        "GET", "/webhooks/{webhook_id}", get_webhook, "getWebhook", "One webhook",
        "The webhook.", scope=SCOPE, params=(WEBHOOK_ID,), response=WebhookInfo,
        wrap=Wrap.ONE, errors=_ONE),
    Endpoint(
        "PATCH", "/webhooks/{webhook_id}", update_webhook, "updateWebhook",
        "Change a webhook's URL, events, description; disable or enable it",
        "The webhook as it is now. Disabling fails the events it is owed (recover sends "
        "them again); enabling clears why it was disabled.", scope=SCOPE,
        params=(WEBHOOK_ID,), body=UpdateWebhookRequest,
        example=UpdateWebhookRequest(enabled=True), response=WebhookInfo, wrap=Wrap.ONE,
        errors=(400, 401, 403, 404, 405, 413)),
    Endpoint(
        "DELETE", "/webhooks/{webhook_id}", delete_webhook, "deleteWebhook",
        "Delete a webhook, its owed events and its deliveries", "Deleted (no body).",
        scope=SCOPE, status=204, params=(WEBHOOK_ID,), errors=_ONE),
    Endpoint(
        "POST", "/webhooks/{webhook_id}/rotate-secret", rotate_secret, "rotateWebhookSecret",
        "A new signing secret; the old one keeps signing beside it for 24 h",
        "The new secret, shown only here.", scope=SCOPE, params=(WEBHOOK_ID,),
        response=RotatedSecret, wrap=Wrap.ONE, errors=_ONE),
    Endpoint(
        "GET", "/webhooks/{webhook_id}/deliveries", list_deliveries, "listWebhookDeliveries",
        "Every attempt to deliver the webhook's events, newest first",
        "A page; `nextCursor` is there when more follow.", scope=SCOPE,
        params=(WEBHOOK_ID, LIMIT, CURSOR), response=Delivery, wrap=Wrap.LIST,
        errors=(400, 401, 403, 404, 405)),
    Endpoint(
        "POST", "/webhooks/{webhook_id}/test", test_webhook, "testWebhook",
        "Send a `webhook.test` event through the outbox, whatever the subscription",
        "Queued; its attempts are listed in the deliveries.", scope=SCOPE, status=202,
        params=(WEBHOOK_ID,), response=Queued, wrap=Wrap.ONE, errors=_ONE),
    Endpoint(
        "POST", "/webhooks/{webhook_id}/recover", recover_webhook, "recoverWebhook",
        "Send again every event that finally failed since a time",
        "How many events are owed again.", scope=SCOPE, status=202, params=(WEBHOOK_ID,),
        body=RecoverRequest, example=RecoverRequest(since="2026-12-01T00:00:00Z"),
        response=Recovered, wrap=Wrap.ONE, errors=(400, 401, 403, 404, 405, 409, 413)),
    Endpoint(
        "POST", "/events/{event_id}/redeliver", redeliver_event, "redeliverEvent",
        "Send one event again (order with the message's other events is not kept)",
        "Queued, with a fresh round of retries.", scope=SCOPE, status=202,
        params=(EVENT_ID,), response=Queued, wrap=Wrap.ONE,
        errors=(401, 403, 404, 405, 409)),
)
