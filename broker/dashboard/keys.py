"""The dashboard's API keys (CONTRACT section 11): the account's keys with
their prefix, scopes, limit, expiry and when each was last used; create one
(the key shown once, with a copy button), revoke, rotate (the new key shown
once). Every action is a function of services/keys.py, as `/keys` and
`smsdora keys` call it."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from broker.clock import utcnow
from broker.dashboard.web import Session, broker_of, page, redirect, render
from broker.errors import BadRequest
from broker.keys import KEY_KIND
from broker.services import keys as key_service
from protocol.api import MAX_EXPIRES_IN_S, MAX_NAME_CHARS, MAX_RATE_LIMIT, SCOPES

DAY_S = 86400
# The expiry menu: (value, label); "" never expires. A number of days typed
# beside it wins over the menu.
EXPIRIES = (("", "Never"), ("1", "In 1 day"), ("30", "In 30 days"), ("90", "In 90 days"),
            ("365", "In 1 year"))
MAX_DAYS = MAX_EXPIRES_IN_S // DAY_S


def key_id_of(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["key_id"])
    except ValueError:
        raise key_service.KeyNotFound() from None


def whole_number(fields: dict[str, str], name: str, label: str, high: int) -> int | None:
    """An optional field holding a whole number from 1 to `high`."""
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise BadRequest(f"{label} must be a whole number from 1 to {high:,}")
    return int(raw)


class KeyForm:
    """The create form as typed, read into what services/keys.create takes."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.name = fields.get("name", "").strip()
        self.scopes = [s for s in fields.get("scopes[]", "").split(",") if s]

    def read(self) -> tuple[int | None, int | None]:
        """(rate limit per minute, expiry in seconds), or BadRequest."""
        if len(self.name) > MAX_NAME_CHARS:
            raise BadRequest(f"The name is longer than {MAX_NAME_CHARS} characters")
        rate = whole_number(self.fields, "rate_limit", "The rate limit", MAX_RATE_LIMIT)
        days = whole_number(self.fields, "expires_days", "The number of days", MAX_DAYS)
        if days is None:
            menu = self.fields.get("expires", "")
            if menu not in dict(EXPIRIES):
                raise BadRequest("Choose when the key expires from the list")
            days = int(menu) if menu else None
        return rate, None if days is None else days * DAY_S


async def _page(request: Request, user: Session, status: int = 200,
                **context: Any) -> Response:
    broker = broker_of(request)
    listed = await key_service.page(broker.pool, user.account_id, None)
    context.setdefault("form", KeyForm({}))
    return render(request, "keys.html", status, user=user, keys=listed.keys, now=utcnow(),
                  kind=KEY_KIND, scopes=SCOPES,
                  expiries=EXPIRIES, max_days=MAX_DAYS, max_rate=MAX_RATE_LIMIT,
                  max_name=MAX_NAME_CHARS, **context)


@page
async def keys_page(request: Request, user: Session) -> Response:
    return await _page(request, user)


@page
async def create_key(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    form = KeyForm(request.state.form)
    try:
        rate, expires_in_s = form.read()
        issued = await key_service.create(broker.pool, broker.secret, user.account_id,
                                          form.name, form.scopes, rate, expires_in_s)
    except BadRequest as err:
        return await _page(request, user, 400, form=form, message=err.message)
    # The secret is in this page only: never in a URL, a cookie or a later page.
    return await _page(request, user, issued=issued, issued_what="created")


@page
async def revoke_key(request: Request, user: Session) -> Response:
    await key_service.revoke(broker_of(request).pool, key_id_of(request), user.account_id)
    return redirect("/dashboard/keys")


@page
async def rotate_key(request: Request, user: Session) -> Response:
    broker = broker_of(request)
    issued = await key_service.rotate(broker.pool, broker.secret, key_id_of(request),
                                      user.account_id)
    if issued is None:
        raise key_service.KeyNotFound()
    return await _page(request, user, issued=issued, issued_what="rotated")


ROUTES: list[BaseRoute] = [
    Route("/dashboard/keys", keys_page, methods=["GET"]),
    Route("/dashboard/keys", create_key, methods=["POST"]),
    Route("/dashboard/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    Route("/dashboard/keys/{key_id}/rotate", rotate_key, methods=["POST"]),
]
