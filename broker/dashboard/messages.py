"""The dashboard's messages (CONTRACT section 11): the list, newest first,
filtered as GET /messages filters it and updated live; a message's detail
with its history as a timeline, live, and its cancel; "Send a test SMS"
through the send path POST /messages/send takes.

Live rows: a page names the keyset range it shows (`lo`, `hi`) and when it
was rendered (`t`); its feed sends the rows of that range whose row changed
since the cursor (`messages.updated_at`, in microseconds), and rows newer
than `hi` that match the filters, to be put at the top of the first page.
`updated_at` is the writing transaction's clock, so a row can commit a
little after a later-stamped one was seen: the cursor trails the database's
clock by MARGIN, and a row changed within it is sent again (replaced by id,
harmless) rather than missed."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker import store
from broker.clock import utcnow
from broker.dashboard.live import Update, feed
from broker.dashboard.web import (
    LoginRequired,
    Session,
    account_of,
    broker_of,
    page,
    redirect,
    render,
    session,
    templates,
)
from broker.errors import BadRequest, BrokerError, NotFound, Unavailable
from broker.http.messages import CURSOR, DEVICE, RECIPIENT, SINCE, STATUS, UNTIL, read_share
from broker.services import devices as device_service
from broker.services import messages as message_service
from broker.store.messages import Changed
from protocol import lifecycle
from protocol.api import SendResponse

PAGE_SIZE = 50
FEED_LIMIT = 200
MARGIN = dt.timedelta(seconds=2)
ROWS = "messages-body"  # the list's tbody, where new rows go
CANCELLABLE = (lifecycle.QUEUED, lifecycle.DISPATCHING)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_send_response = msgspec.json.Decoder(SendResponse)


def micros(t: dt.datetime) -> int:
    return (t - _EPOCH) // dt.timedelta(microseconds=1)


def from_micros(raw: str | None) -> dt.datetime | None:
    if not raw or not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    return _EPOCH + dt.timedelta(microseconds=int(raw))


# --- filters -----------------------------------------------------------------------


class Filters(NamedTuple):
    status: str | None
    where: store.MessageFilter
    form: dict[str, str]  # as given, for the form and the live URL


def _day_or_time(query: Mapping[str, str], name: str, *, end: bool) -> dt.datetime | None:
    """A date input's `YYYY-MM-DD` (a UTC day: from its start, or `end`:
    through its end), or what GET /messages takes (RFC 3339)."""
    raw = query.get(name, "").strip()
    if len(raw) == 10:
        try:
            day = dt.datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=dt.UTC)
        except ValueError:
            raise BadRequest(f"{name} must be a date such as 2026-12-01") from None
        return day + dt.timedelta(days=1) if end else day
    return (UNTIL if end else SINCE).read({name: raw} if raw else {})


def filters_of(query: Mapping[str, str]) -> Filters:
    """The list's filters, read by GET /messages's own declarations."""
    recipient = RECIPIENT.read(query)
    where = store.MessageFilter(
        device_id=DEVICE.read(query),
        recipient=message_service.normalize_recipient(recipient) if recipient else None,
        since=_day_or_time(query, "since", end=False),
        until=_day_or_time(query, "until", end=True))
    given = {k: query.get(k, "") for k in ("status", "device", "recipient", "since", "until")}
    return Filters(STATUS.read(query), where, {k: v for k, v in given.items() if v})


def row_html(row: store.MessageRow, into: str | None = None) -> str:
    return templates.get_template("_message_row.html").render(m=row, into=into)


# --- the list ----------------------------------------------------------------------


@page
async def messages_page(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    q = request.query_params
    rendered_at = utcnow() - MARGIN
    devices = (await device_service.page(broker.pool, user.account_id, None)).devices
    try:
        filters = filters_of(q)
        before = CURSOR.read(q)
    except BadRequest as err:
        return render(request, "messages.html", 400, user=user, messages=[], next_url=None,
                      devices=devices, filters=dict(q), error=err.message, live=None,
                      statuses=lifecycle.STATUSES)
    async with read_share(broker, user.account_id):
        found = await message_service.page(broker.pool, user.account_id, filters.status,
                                           filters.where, PAGE_SIZE, before)
        rows = found.messages
        if rows:
            lo, hi = rows[-1].seq, rows[0].seq
        elif before is None:
            hi = await message_service.newest_seq(broker.pool, user.account_id)
            lo = hi + 1
        else:
            lo = hi = 0
    next_url = None
    if found.next_seq is not None:
        next_url = "/dashboard/messages?" + urlencode({**filters.form,
                                                       "cursor": found.next_seq})
    live = None
    if rows or before is None:
        live = "/dashboard/live?" + urlencode({
            "view": "messages", **filters.form, "lo": lo, "hi": hi,
            "top": "1" if before is None else "0", "t": micros(rendered_at)})
    return render(request, "messages.html", user=user, messages=rows, next_url=next_url,
                  devices=devices, filters=filters.form, error=None, live=live,
                  statuses=lifecycle.STATUSES)


def _int(query: Mapping[str, str], name: str) -> int:
    raw = query.get(name, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else 0


def next_cursor(after: dt.datetime, found: Changed, limit: int) -> str:
    """Past the last change seen when more may follow; else the database's
    clock less MARGIN (never backwards)."""
    if len(found.rows) >= limit:
        return str(micros(found.updated_at[-1]))
    return str(micros(max(after, found.now - MARGIN)))


@feed("messages")
async def messages_feed(request: Request, account_id: uuid.UUID, query: Mapping[str, str],
                        cursor: str | None) -> Update:
    try:
        filters = filters_of(query)
    except BadRequest:
        return Update([], None)
    after = from_micros(cursor) or from_micros(query.get("t")) or utcnow() - MARGIN
    lo, hi, top = _int(query, "lo"), _int(query, "hi"), query.get("top") == "1"
    found = await message_service.changed(broker_of(request).pool, account_id, after, lo,
                                          filters.where, FEED_LIMIT)
    html = []
    for row in found.rows:
        if row.seq <= hi:
            html.append(row_html(row))
        elif top and filters.status in (None, row.status):
            html.append(row_html(row, ROWS))
    return Update(html, next_cursor(after, found, FEED_LIMIT))


# --- one message -------------------------------------------------------------------


def _message_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["message_id"])
    except ValueError:
        raise message_service.MessageNotFound() from None


def _state(row: store.MessageRow, history: list[store.HistoryRow]) -> str:
    return f"{row.status}.{len(history)}"


def _detail(request: Request, user: Session, row: store.MessageRow,
            history: list[store.HistoryRow], status: int = 200,
            error: str | None = None) -> Response:
    live = "/dashboard/live?" + urlencode({"view": "message", "id": str(row.id),
                                           "v": _state(row, history)})
    return render(request, "message.html", status, user=user, m=row, history=history,
                  error=error, live=live, cancellable=CANCELLABLE)


@page
async def message_page(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    message_id = _message_id(request)
    async with read_share(broker, user.account_id):
        row, history = await message_service.get(broker.pool, user.account_id, message_id)
    return _detail(request, user, row, history)


@page
async def cancel_page(request: Request, user: Session) -> Response:
    """POST /messages/{id}/cancel's service: 409 while a phone may be sending."""
    broker = broker_of(request)
    message_id = _message_id(request)
    try:
        await message_service.cancel(broker.pool, broker.presence, user.account_id, message_id,
                                     broker.peers)
    except message_service.TooLateToCancel as err:
        row, history = await message_service.get(broker.pool, user.account_id, message_id)
        return _detail(request, user, row, history, err.status, err.message)
    broker.wake.poke(user.account_id)  # its message.failed event is committed
    return redirect(f"/dashboard/messages/{message_id}")


@feed("message")
async def message_feed(request: Request, account_id: uuid.UUID, query: Mapping[str, str],
                       cursor: str | None) -> Update:
    """The detail panel again when the message's status or history moved."""
    try:
        message_id = uuid.UUID(query.get("id", ""))
        row, history = await message_service.get(broker_of(request).pool, account_id,
                                                 message_id)
        user = await session(request)
    except (ValueError, NotFound, LoginRequired):
        return Update([], None)
    state = _state(row, history)
    if state == (cursor or query.get("v")):
        return Update([], None)
    html = templates.get_template("_message_detail.html").render(
        m=row, history=history, csrf=user.csrf, cancellable=CANCELLABLE)
    return Update([html], state)


# --- send a test SMS ---------------------------------------------------------------


async def send_test(request: Request, account: store.Account, recipient: str,
                    text: str) -> uuid.UUID:
    """What POST /messages/send does with a key's send, for the session's
    account: now or never (no ttl), counted against the month's quota, in
    the account's share of the pool."""
    broker = broker_of(request)
    if broker.draining:
        raise Unavailable("The broker is shutting down: try again in a moment")
    number = message_service.normalize_recipient(recipient.strip())
    message_service.check_text(text)
    await broker.pool_shares.acquire(account.id)
    try:
        body = await broker.dispatcher.send(account.id, account.monthly_messages, number, text,
                                            None, None, b"")
    finally:
        broker.pool_shares.release(account.id)
    return uuid.UUID(_send_response.decode(body).data.id)


@page
async def new_message_page(request: Request, user: Session) -> Response:
    if request.method == "GET":
        return render(request, "message_new.html", user=user, error=None, recipient="",
                      text="")
    fields = request.state.form
    recipient, text = fields.get("recipient", ""), fields.get("message", "")
    try:
        message_id = await send_test(request, await account_of(request, user), recipient, text)
    except BrokerError as err:
        if err.status >= 500 and not isinstance(err, Unavailable):
            raise
        return render(request, "message_new.html", err.status, user=user, error=err.message,
                      recipient=recipient, text=text)
    return redirect(f"/dashboard/messages/{message_id}")


ROUTES: list[BaseRoute] = [
    Route("/dashboard/messages", messages_page, methods=["GET"]),
    Route("/dashboard/messages/new", new_message_page, methods=["GET", "POST"]),
    Route("/dashboard/messages/{message_id}", message_page, methods=["GET"]),
    Route("/dashboard/messages/{message_id}/cancel", cancel_page, methods=["POST"]),
]
