"""Webhook endpoints (CONTRACT section 9): one implementation of each
operation, for the HTTP API and the dashboard. Every one is scoped to the
caller's account: another account's endpoint or event is not found."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from broker import store
from broker.errors import BadRequest, Conflict, NotFound
from broker.store import webhooks as outbox
from broker.webhooks import addresses, signing
from protocol.webhooks import ALL, EVENT_TYPES

ROTATION_OVERLAP_S = 24 * 3600.0  # the old secret signs beside the new one this long
MAX_PER_ACCOUNT = 20


class WebhookNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Webhook not found")


class Disabled(Conflict):
    def __init__(self) -> None:
        super().__init__("Webhook is disabled: enable it first (PATCH with enabled true)")


class Created(NamedTuple):
    webhook: outbox.WebhookRow
    secret: str  # shown once


def check_events(events: list[str]) -> list[str]:
    """The subscription as given, each type once; `*` is every type."""
    bad = [e for e in events if e != ALL and e not in EVENT_TYPES]
    if bad:
        raise BadRequest(f"unknown event type(s): {', '.join(bad)}; known: {ALL}, "
                         f"{', '.join(EVENT_TYPES)}")
    return list(dict.fromkeys(events))


async def check_url(url: str, allow_private: bool) -> str:
    try:
        await addresses.check(url, allow_private)
    except addresses.NotAllowed as err:
        raise BadRequest(str(err)) from None
    return url


def _text(value: str, name: str) -> str:
    if "\x00" in value:
        raise BadRequest(f"{name} must not contain NUL characters")
    return value


async def create(db: store.Conn, account_id: uuid.UUID, url: str, events: list[str],
                 description: str, allow_private: bool) -> Created:
    events = check_events(events)
    await check_url(_text(url, "url"), allow_private)
    secret = signing.new_secret()
    async with db.transaction():
        # The account's endpoints, locked: concurrent creates count each other.
        count = await db.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM webhooks WHERE account_id = $1 FOR UPDATE) w",
            account_id)
        if count >= MAX_PER_ACCOUNT:
            raise Conflict(f"An account has at most {MAX_PER_ACCOUNT} webhooks")
        row = await outbox.create_webhook(db, account_id, url, events,
                                          _text(description, "description"), secret)
    return Created(row, secret)


async def get(db: store.Db, account_id: uuid.UUID, webhook_id: uuid.UUID) -> outbox.WebhookRow:
    row = await outbox.get_webhook(db, account_id, webhook_id)
    if row is None:
        raise WebhookNotFound()
    return row


async def update(db: store.Conn, account_id: uuid.UUID, webhook_id: uuid.UUID,
                 url: str | None, events: list[str] | None, description: str | None,
                 enabled: bool | None, allow_private: bool) -> outbox.WebhookRow:
    if events is not None:
        events = check_events(events)
    if url is not None:
        await check_url(_text(url, "url"), allow_private)
    row = await outbox.update_webhook(
        db, account_id, webhook_id, url, events,
        None if description is None else _text(description, "description"), enabled)
    if row is None:
        raise WebhookNotFound()
    return row


async def delete(db: store.Db, account_id: uuid.UUID, webhook_id: uuid.UUID) -> None:
    if not await outbox.delete_webhook(db, account_id, webhook_id):
        raise WebhookNotFound()


async def rotate_secret(db: store.Db, account_id: uuid.UUID,
                        webhook_id: uuid.UUID) -> tuple[outbox.WebhookRow, str]:
    secret = signing.new_secret()
    row = await outbox.rotate_secret(db, account_id, webhook_id, secret, ROTATION_OVERLAP_S)
    if row is None:
        raise WebhookNotFound()
    return row, secret


async def send_test(db: store.Db, account_id: uuid.UUID, webhook_id: uuid.UUID) -> uuid.UUID:
    event_id = await outbox.enqueue_test(db, account_id, webhook_id)
    if event_id is None:
        raise WebhookNotFound()
    return event_id


async def redeliver(db: store.Db, account_id: uuid.UUID, event_id: uuid.UUID) -> outbox.Replayed:
    replayed = await outbox.redeliver(db, account_id, event_id)
    if replayed is None:
        raise NotFound("Event not found")
    if not replayed.enabled:
        raise Disabled()
    return replayed


def parse_since(raw: str) -> dt.datetime:
    try:
        since = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest("since must be an ISO 8601 date-time") from None
    if since.tzinfo is None:
        raise BadRequest("since must carry its UTC offset (e.g. Z)")
    return since


async def recover(db: store.Db, account_id: uuid.UUID, webhook_id: uuid.UUID,
                  since: dt.datetime) -> int:
    n = await outbox.recover(db, account_id, webhook_id, since)
    if n is None:
        raise WebhookNotFound()
    if n < 0:
        raise Disabled()
    return n


async def deliveries(db: store.Db, account_id: uuid.UUID, webhook_id: uuid.UUID, limit: int,
                     before: tuple[int, int] | None) -> list[outbox.AttemptRow]:
    await get(db, account_id, webhook_id)
    return await outbox.list_attempts(db, account_id, webhook_id, limit, before)


async def failing(db: store.Db, account_id: uuid.UUID) -> list[outbox.Failing]:
    """What the dashboard's overview warns of: endpoints disabled, or
    failing since their latest attempt."""
    return await outbox.failing_webhooks(db, account_id)


class Page(NamedTuple):
    webhooks: list[outbox.WebhookRow]
    more: bool  # another page follows the last of these


async def page(db: store.Db, account_id: uuid.UUID, limit: int,
               after: tuple[dt.datetime, uuid.UUID] | None = None) -> Page:
    """The account's endpoints, oldest first, `limit` of them past the keyset
    position `after` (creation time, id)."""
    rows = await outbox.list_webhooks(db, account_id, limit + 1, after)
    return Page(rows[:limit], len(rows) > limit)
