"""What every dashboard page shares (CONTRACT section 11): templates,
sessions, CSRF, forms, and the `page` wrapper that turns "no session" into
a redirect to /login and a refused operation into the page with its reason.

A session is a random token in an HttpOnly, SameSite=Lax cookie (Secure
over HTTPS), looked up by its SHA-256 in PostgreSQL (store/sessions.py), so
it survives a restart and works on any node. Every form carries a CSRF
token: the session's, or before login a double-submit cookie's."""

from __future__ import annotations

import functools
import hmac
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from broker import store
from broker.clock import iso
from broker.errors import BadRequest, BrokerError
from broker.http.client import from_trusted_proxy
from broker.http.responses import read_body
from broker.store import sessions

if TYPE_CHECKING:
    from broker.runtime import Broker

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "smsdora_session"
CSRF_COOKIE = "smsdora_csrf"  # before login: the double-submit token
MAX_FIELDS = 50
TOUCH_EVERY_S = 60.0

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
templates.filters["iso"] = iso


class LoginRequired(Exception):
    """No live session: the page answers with a redirect to /login."""


@dataclass(frozen=True)
class Session:
    token: str
    account_id: uuid.UUID
    email: str
    plan: str
    csrf: str


def broker_of(request: Request) -> Broker:
    return request.app.state.broker  # type: ignore[no-any-return]


def is_https(request: Request) -> bool:
    """The browser's connection is HTTPS: ours, or a trusted proxy's."""
    if request.url.scheme == "https":
        return True
    if from_trusted_proxy(request.scope, broker_of(request).settings.trusted_proxies):
        return request.headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"
    return False


async def session(request: Request) -> Session:
    """The request's session, or LoginRequired."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 100:
        raise LoginRequired()
    broker = broker_of(request)
    row = await sessions.session_of(broker.pool, token)
    if row is None:
        raise LoginRequired()
    if time.time() - row.seen_at.timestamp() > TOUCH_EVERY_S:
        await sessions.touch_session(broker.pool, token)
    return Session(token, row.account_id, row.email, row.plan, row.csrf)


async def start_session(request: Request, response: Response, account_id: uuid.UUID) -> None:
    broker = broker_of(request)
    token = secrets.token_urlsafe(32)
    lifetime_s = broker.settings.session_days * 86400
    await sessions.create_session(broker.pool, token, account_id, secrets.token_urlsafe(24),
                                  lifetime_s)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(lifetime_s), path="/",
                        httponly=True, samesite="lax", secure=is_https(request))
    response.delete_cookie(CSRF_COOKIE, path="/")


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


async def form(request: Request) -> dict[str, str]:
    """An urlencoded form, within the API's body limit (64 KiB, 413) and
    field count; the last value of a repeated field wins, except for fields
    ending in `[]`, whose values are joined with commas."""
    body = await read_body(request)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=MAX_FIELDS,
                          strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form could not be read") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in value:
            raise BadRequest(f"{name} must not contain NUL characters")
        if name.endswith("[]") and name in out:
            out[name] = f"{out[name]},{value}"
        else:
            out[name] = value
    return out


def check_csrf(fields: Mapping[str, str], expected: str | None) -> None:
    given = fields.get("csrf", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused()


class CsrfRefused(BrokerError):
    status = 403

    def __init__(self) -> None:
        super().__init__("This form has expired or did not come from this site: reload the page"
                         " and send it again")


def pre_session_csrf(request: Request) -> str:
    """The double-submit token of the login and signup forms: the cookie's,
    or a new one (set by `render` on the response)."""
    token = request.cookies.get(CSRF_COOKIE)
    return token if token and 20 <= len(token) <= 64 else secrets.token_urlsafe(24)


def render(request: Request, template: str, status: int = 200, *,
           user: Session | None = None, **context: Any) -> HTMLResponse:
    html = templates.get_template(template).render(
        request=request, user=user, csrf=user.csrf if user else context.pop("csrf", ""),
        path=request.url.path, **context)
    response = HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)
    if user is None and "csrf_cookie" in context:
        response.set_cookie(CSRF_COOKIE, context["csrf_cookie"], path="/", httponly=True,
                            samesite="lax", secure=is_https(request))
    return response


# Pages are never framed (clickjacking) nor cached, and load nothing from
# elsewhere: no CDN, no inline script.
_SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}


def redirect(url: str) -> RedirectResponse:
    """303: a form's POST is followed by a GET (no resubmission on reload).
    Only local paths: never a URL built from the request."""
    assert url.startswith("/") and not url.startswith("//")
    return RedirectResponse(url, status_code=303)


def local(path: str | None, default: str = "/dashboard") -> str:
    """A `next=` path to go back to after login: a path of ours, or `default`."""
    if path and path.startswith("/") and not path.startswith("//") and "\\" not in path:
        return path
    return default


View = Callable[[Request, Session], Awaitable[Response]]


def page(view: View) -> Callable[[Request], Awaitable[Response]]:
    """A page that needs a session: without one, to /login (and back here
    after it); a POST's CSRF token checked before the view runs (the view
    reads the form again from `request.state.form`)."""

    @functools.wraps(view)
    async def wrapped(request: Request) -> Response:
        try:
            user = await session(request)
        except LoginRequired:
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return redirect(f"/login?next={quote(back, safe='/')}")
        try:
            if request.method == "POST":
                fields = await form(request)
                check_csrf(fields, user.csrf)
                request.state.form = fields
            return await view(request, user)
        except BrokerError as err:
            if err.status < 500:
                return render(request, "error.html", err.status, user=user, message=err.message)
            raise

    return wrapped


async def account_of(request: Request, user: Session) -> store.Account:
    account = await store.account_by_id(broker_of(request).pool, user.account_id)
    if account is None:
        raise LoginRequired()
    return account
