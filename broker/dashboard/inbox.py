"""The dashboard's inbox (CONTRACT section 11): the SMS the account's phones
received, newest first, filtered and paged as GET /inbox does, new ones
put at the top live.

The feed's cursor is the newest seq shown. A seq is taken as a row is
inserted, so a lower one can commit a moment after a higher one was seen:
the cursor moves only past rows older than MARGIN by the database's clock,
and the newer ones are sent again (replaced by id) until it does."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker import store
from broker.dashboard.live import Update, feed
from broker.dashboard.web import Session, broker_of, page, render, templates
from broker.errors import BadRequest
from broker.http.inbox import CURSOR, DEVICE, SENDER
from broker.http.messages import read_share
from broker.services import devices as device_service
from broker.services import messages as message_service

PAGE_SIZE = 50
FEED_LIMIT = 100
MARGIN = dt.timedelta(seconds=2)
ROWS = "inbox-body"


def row_html(row: store.InboxRow) -> str:
    return templates.get_template("_inbox_row.html").render(s=row, into=ROWS)


def _filters(query: Mapping[str, str]) -> tuple[uuid.UUID | None, str | None, dict[str, str]]:
    device, sender = DEVICE.read(query), SENDER.read(query)
    given = {k: query.get(k, "") for k in ("device", "sender")}
    return device, sender, {k: v for k, v in given.items() if v}


@page
async def inbox_page(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    q = request.query_params
    devices = (await device_service.page(broker.pool, user.account_id, None)).devices
    try:
        device, sender, given = _filters(q)
        before = CURSOR.read(q)
    except BadRequest as err:
        return render(request, "inbox.html", 400, user=user, sms=[], devices=devices,
                      filters=dict(q), error=err.message, next_url=None, live=None)
    async with read_share(broker, user.account_id):
        found = await message_service.inbox_page(broker.pool, user.account_id, device, sender,
                                                 PAGE_SIZE, before)
    next_url = None
    if found.next_seq is not None:
        next_url = "/dashboard/inbox?" + urlencode({**given, "cursor": found.next_seq})
    live = None
    if before is None:  # only the first page grows
        newest = found.sms[0].seq if found.sms else 0
        live = "/dashboard/live?" + urlencode({"view": "inbox", **given, "after": newest})
    return render(request, "inbox.html", user=user, sms=found.sms, devices=devices,
                  filters=given, error=None, next_url=next_url, live=live)


@feed("inbox")
async def inbox_feed(request: Request, account_id: uuid.UUID, query: Mapping[str, str],
                     cursor: str | None) -> Update:
    try:
        device, sender, _ = _filters(query)
    except BadRequest:
        return Update([], None)
    raw = cursor or query.get("after", "")
    after = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else 0
    rows, now = await message_service.inbox_after(broker_of(request).pool, account_id, device,
                                                  sender, after, FEED_LIMIT)
    settled = [r.seq for r in rows if r.created_at < now - MARGIN]
    if len(rows) >= FEED_LIMIT:
        settled = [rows[-1].seq]
    # Oldest first: each put at the top, the newest ends first.
    return Update([row_html(r) for r in rows], str(max([after, *settled])))


ROUTES: list[BaseRoute] = [
    Route("/dashboard/inbox", inbox_page, methods=["GET"]),
]
