"""The dashboard's webhooks (CONTRACT section 11): the account's endpoints;
add one (its signing secret shown once); per endpoint its deliveries log,
updating live, and every operation of `/webhooks`: a test event, redeliver
an event, disable / enable, rotate the secret (shown once), delete, recover
the events that finally failed since a time. Each through
services/webhooks.py, poking the sender as the API does."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.dashboard.live import Update, feed
from broker.dashboard.web import (
    LoginRequired,
    Session,
    broker_of,
    page,
    redirect,
    render,
    session,
    templates,
)
from broker.errors import BadRequest, BrokerError, Conflict
from broker.services import webhooks as service
from broker.store import webhooks as outbox
from protocol.webhooks import ALL, EVENT_TYPES, CreateWebhookRequest

PER_PAGE = 20
_ATTEMPT_BITS = 16  # a deliveries cursor: the event's seq and the attempt, as the API's
DONE = {  # ?done= after a redirect: what the last action did (never a secret)
    "test": "Test event queued: it shows below once it is attempted.",
    "redeliver": "Event queued again, with a fresh round of retries.",
    "enabled": "Webhook enabled: the events it is owed go now.",
    "disabled": "Webhook disabled: the events it was owed are failed (recover sends them).",
    "recovered": "Failed events queued again.",
}


def webhook_id_of(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["webhook_id"])
    except ValueError:
        raise service.WebhookNotFound() from None


def _at(path: uuid.UUID) -> str:
    return f"/dashboard/webhooks/{path}"


# --- the list and "Add a webhook" -------------------------------------------


class WebhookForm:
    def __init__(self, fields: Mapping[str, str]) -> None:
        self.url = fields.get("url", "").strip()
        self.events = [e for e in fields.get("events[]", "").split(",") if e]
        self.description = fields.get("description", "").strip()

    def read(self) -> CreateWebhookRequest:
        """The API's own body, with its limits (URL, events, description)."""
        if not self.url:
            raise BadRequest("Give the URL to send the events to")
        if not self.events:
            raise BadRequest("Choose at least one event, or all events")
        try:
            return msgspec.convert({"url": self.url, "events": self.events,
                                    "description": self.description}, CreateWebhookRequest)
        except msgspec.ValidationError as err:
            raise BadRequest(str(err)) from None


async def _list(request: Request, user: Session, status: int = 200,
                **context: Any) -> Response:
    listed = await service.page(broker_of(request).pool, user.account_id,
                                service.MAX_PER_ACCOUNT)
    context.setdefault("form", WebhookForm({}))
    return render(request, "webhooks.html", status, user=user, webhooks=listed.webhooks,
                  event_types=EVENT_TYPES, all_events=ALL,
                  most=service.MAX_PER_ACCOUNT, **context)


@page
async def webhooks_page(request: Request, user: Session) -> Response:
    return await _list(request, user)


@page
async def create_webhook(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    form = WebhookForm(request.state.form)
    try:
        req = form.read()
        async with broker.pool.acquire() as db:
            row, secret = await service.create(db, user.account_id, req.url, req.events,
                                               req.description,
                                               broker.settings.webhook_allow_private)
    except (BadRequest, Conflict) as err:  # a private URL, an unknown event, too many
        return await _list(request, user, err.status, form=form, message=err.message)
    broker.wake.accounts = broker.wake.accounts | {user.account_id}
    # The secret is in this page only: never in a URL, a cookie or a later page.
    return await _list(request, user, 200, created=row, secret=secret)


# --- one endpoint -----------------------------------------------------------


def read_cursor(raw: str | None) -> tuple[int, int] | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) >= 2**62:
        raise BadRequest("That page of deliveries does not exist")
    cursor = int(raw)
    return cursor >> _ATTEMPT_BITS, cursor & ((1 << _ATTEMPT_BITS) - 1)


def cursor_of(row: outbox.AttemptRow) -> str:
    return str((row.event_seq << _ATTEMPT_BITS) | row.attempt)


async def _detail(request: Request, user: Session, webhook_id: uuid.UUID, status: int = 200,
                  **context: Any) -> Response:
    pool = broker_of(request).pool
    row = await service.get(pool, user.account_id, webhook_id)
    before = read_cursor(request.query_params.get("before"))
    rows = await service.deliveries(pool, user.account_id, webhook_id, PER_PAGE + 1, before)
    more = len(rows) > PER_PAGE
    rows = rows[:PER_PAGE]
    done = DONE.get(request.query_params.get("done", ""))
    if done and request.query_params.get("n", "").isdigit():
        done = f"{done[:-1]}: {request.query_params['n']}."
    return render(request, "webhook.html", status, user=user, webhook=row, deliveries=rows,
                  older=cursor_of(rows[-1]) if more and rows else None, first=before is None,
                  done=done, live=f"/dashboard/live?view=webhook&id={webhook_id}"
                  f"&v={quote(_state(row, rows))}" if before is None else None, **context)


@page
async def webhook_page(request: Request, user: Session) -> Response:
    return await _detail(request, user, webhook_id_of(request))


def _acted(webhook_id: uuid.UUID, done: str, **query: int) -> Response:
    more = "".join(f"&{k}={v}" for k, v in query.items())
    return redirect(f"{_at(webhook_id)}?done={done}{more}")


async def _refused(request: Request, user: Session, webhook_id: uuid.UUID,
                   err: BrokerError) -> Response:
    """The page again with the reason (a disabled endpoint, a bad time)."""
    message = ("This webhook is disabled: enable it first." if isinstance(err, service.Disabled)
               else err.message)
    return await _detail(request, user, webhook_id, err.status, message=message)


@page
async def send_test(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    webhook_id = webhook_id_of(request)
    await service.send_test(broker.pool, user.account_id, webhook_id)
    broker.wake.poke_now(user.account_id)
    return _acted(webhook_id, "test")


@page
async def redeliver(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    webhook_id = webhook_id_of(request)
    await service.get(broker.pool, user.account_id, webhook_id)
    try:
        event_id = uuid.UUID(request.state.form.get("event_id", ""))
    except ValueError:
        raise BadRequest("Which event? (event_id)") from None
    try:
        replayed = await service.redeliver(broker.pool, user.account_id, event_id)
    except service.Disabled as err:
        return await _refused(request, user, webhook_id, err)
    broker.wake.poke_now(user.account_id)
    return _acted(replayed.webhook_id, "redeliver")


async def _set_enabled(request: Request, user: Session, enabled: bool) -> Response:
    broker = broker_of(request)
    webhook_id = webhook_id_of(request)
    async with broker.pool.acquire() as db:
        await service.update(db, user.account_id, webhook_id, None, None, None, enabled,
                             broker.settings.webhook_allow_private)
    if enabled:
        broker.wake.accounts = broker.wake.accounts | {user.account_id}
        broker.wake.poke_now(user.account_id)  # enabled again: what it is owed goes now
    return _acted(webhook_id, "enabled" if enabled else "disabled")


@page
async def enable(request: Request, user: Session) -> Response:
    return await _set_enabled(request, user, True)


@page
async def disable(request: Request, user: Session) -> Response:
    return await _set_enabled(request, user, False)


@page
async def rotate_secret(request: Request, user: Session) -> Response:
    webhook_id = webhook_id_of(request)
    _, secret = await service.rotate_secret(broker_of(request).pool, user.account_id, webhook_id)
    return await _detail(request, user, webhook_id, secret=secret)


@page
async def delete(request: Request, user: Session) -> Response:
    await service.delete(broker_of(request).pool, user.account_id, webhook_id_of(request))
    return redirect("/dashboard/webhooks")


def read_since(raw: str) -> dt.datetime:
    """A `datetime-local` field (no offset: UTC, as the page says) or a
    full ISO 8601 time."""
    try:
        since = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadRequest("Give the time as YYYY-MM-DD HH:MM (UTC)") from None
    return since if since.tzinfo is not None else since.replace(tzinfo=dt.UTC)


@page
async def recover(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    webhook_id = webhook_id_of(request)
    try:
        since = read_since(request.state.form.get("since", ""))
        n = await service.recover(broker.pool, user.account_id, webhook_id, since)
    except (BadRequest, service.Disabled) as err:
        return await _refused(request, user, webhook_id, err)
    broker.wake.poke_now(user.account_id)
    return _acted(webhook_id, "recovered", n=n)


def _state(row: outbox.WebhookRow, deliveries: list[outbox.AttemptRow]) -> str:
    """What the live page shows changed: the newest attempt, the endpoint's
    state (disabled after failing, enabled again)."""
    newest = cursor_of(deliveries[0]) if deliveries else "-"
    return f"{newest}.{int(row.enabled)}.{row.updated_at.timestamp():.6f}"


@feed("webhook")
async def webhook_feed(request: Request, account_id: uuid.UUID, query: Mapping[str, str],
                       cursor: str | None) -> Update:
    """The endpoint's state and first page of deliveries, when either moved."""
    pool = broker_of(request).pool
    try:
        webhook_id = uuid.UUID(query.get("id", ""))
        row = await service.get(pool, account_id, webhook_id)
    except (ValueError, service.WebhookNotFound):
        return Update([], None)
    rows = await service.deliveries(pool, account_id, webhook_id, PER_PAGE, None)
    state = _state(row, rows)
    if state == (cursor or query.get("v")):
        return Update([], None)
    try:
        user = await session(request)
    except LoginRequired:
        return Update([], None)
    context = {"webhook": row, "deliveries": rows, "csrf": user.csrf}
    return Update([templates.get_template("_webhook_state.html").render(context),
                   templates.get_template("_webhook_deliveries.html").render(context)], state)


ROUTES: list[BaseRoute] = [
    Route("/dashboard/webhooks", webhooks_page, methods=["GET"]),
    Route("/dashboard/webhooks", create_webhook, methods=["POST"]),
    Route("/dashboard/webhooks/{webhook_id}", webhook_page, methods=["GET"]),
    Route("/dashboard/webhooks/{webhook_id}/test", send_test, methods=["POST"]),
    Route("/dashboard/webhooks/{webhook_id}/redeliver", redeliver, methods=["POST"]),
    Route("/dashboard/webhooks/{webhook_id}/enable", enable, methods=["POST"]),
    Route("/dashboard/webhooks/{webhook_id}/disable", disable, methods=["POST"]),
    Route("/dashboard/webhooks/{webhook_id}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/dashboard/webhooks/{webhook_id}/delete", delete, methods=["POST"]),
    Route("/dashboard/webhooks/{webhook_id}/recover", recover, methods=["POST"]),
]
