"""The dashboard's overview (CONTRACT section 11): this month's usage
against the plan (as GET /account reads it), phones online, the most recent
messages (live, the messages page's rows), failing webhooks, and where to
start when the account has no phone or no key yet."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.clock import utcnow
from broker.dashboard.live import Update, feed
from broker.dashboard.messages import MARGIN, from_micros, micros, next_cursor, row_html
from broker.dashboard.web import Session, broker_of, page, redirect, render, templates
from broker.http.messages import read_share
from broker.services import accounts as account_service
from broker.services import keys as key_service
from broker.services import messages as message_service
from broker.services import webhooks as webhook_service
from broker.store import MessageFilter

RECENT = 5
ROWS = "recent-body"


async def _cards(request: Request, account_id: uuid.UUID) -> dict[str, Any]:
    """What the cards show: usage, phones, failing webhooks."""
    broker = broker_of(request)
    standing = await account_service.standing(broker.pool, account_id)
    phones = await account_service.phones(broker.pool, account_id, broker.settings.node,
                                          lambda d: broker.presence.get(d) is not None)
    failing = await webhook_service.failing(broker.pool, account_id)
    return {"standing": standing, "phones": phones, "failing": failing}


def _cards_html(cards: Mapping[str, Any]) -> str:
    return templates.get_template("_overview_cards.html").render(**cards)


@page
async def overview_page(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    rendered_at = utcnow() - MARGIN
    async with read_share(broker, user.account_id):
        cards = await _cards(request, user.account_id)
        recent = await message_service.page(broker.pool, user.account_id, None,
                                            MessageFilter(), RECENT)
        keys = await key_service.page(broker.pool, user.account_id, 1)
    rows = recent.messages
    hi = rows[0].seq if rows else 0
    live = "/dashboard/live?" + urlencode({
        "view": "overview", "lo": rows[-1].seq if rows else 1, "hi": hi,
        "t": micros(rendered_at), "c": _digest(_cards_html(cards))})
    return render(request, "overview.html", user=user, messages=rows, has_key=bool(keys.keys),
                  live=live, **cards)


def _digest(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:16]


@feed("overview")
async def overview_feed(request: Request, account_id: uuid.UUID, query: Mapping[str, str],
                        cursor: str | None) -> Update:
    """The recent rows that moved and new ones at the top; the cards again
    when what they show changed. Cursor: `<micros>.<cards digest>`."""
    at, _, seen = (cursor or "").partition(".")
    after = from_micros(at) or from_micros(query.get("t")) or utcnow() - MARGIN
    seen = seen or query.get("c", "")
    lo_raw, hi_raw = query.get("lo", ""), query.get("hi", "")
    lo = int(lo_raw) if lo_raw.isdigit() and len(lo_raw) < 19 else 1
    hi = int(hi_raw) if hi_raw.isdigit() and len(hi_raw) < 19 else 0
    broker = broker_of(request)
    found = await message_service.changed(broker.pool, account_id, after, lo, MessageFilter(),
                                          50)
    html = [row_html(r, ROWS if r.seq > hi else None) for r in found.rows]
    cards = _cards_html(await _cards(request, account_id))
    digest = _digest(cards)
    if digest != seen:
        html.append(cards)
    return Update(html, f"{next_cursor(after, found, 50)}.{digest}")


async def root(request: Request) -> Response:
    return redirect("/dashboard")


ROUTES: list[BaseRoute] = [
    Route("/dashboard", overview_page, methods=["GET"]),
    Route("/", root, methods=["GET"]),
]
