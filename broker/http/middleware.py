"""Around every request: its id, its deadline (and its body's), one
structured log line with the client address and the latency histogram;
every failure answered in the contract's error shape (section 3, Errors);
and the hot paths handed to their handlers without Starlette's router."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from broker import store
from broker.errors import BrokerError
from broker.http.client import Network, client_address
from broker.http.deadline import SCOPE_KEY, Deadline
from broker.http.responses import BodyTimeout, error_response
from broker.ops import logs, metrics

# The logger docs/OPERATIONS.md shows the request line under.
log = logging.getLogger("smsdora.app")
# HTTP_LATENCY's children by (method, route, status), looked up once each
# rather than through prometheus_client's lock on every request (bounded:
# a client's made-up methods are not kept).
_latency: dict[tuple[str, str, int], Any] = {}
_LATENCY_CACHED = 512

WebSocketHandler = Callable[[WebSocket], Awaitable[None]]


class RequestContext:
    """`fast_http`: (method, path) -> a bare ASGI app answering it, skipping
    the router and its two exception wrappers (issue 5: about 8 % of a
    send). `websocket`: path -> the handler of that socket, called without
    the router's exception wrapper around every frame it sends (issue 5)."""

    def __init__(self, app: ASGIApp, deadline_s: float = 5.0,
                 fast_http: Mapping[tuple[str, str], ASGIApp] | None = None,
                 websocket: Mapping[str, WebSocketHandler] | None = None,
                 body_deadline_s: float = 30.0,
                 trusted_proxies: Sequence[Network] = ()) -> None:
        self.app = app
        self.deadline_s = deadline_s
        self.body_deadline_s = body_deadline_s
        self.trusted_proxies = tuple(trusted_proxies)
        # Two string comparisons per request, as when the path was written
        # here: a dict probe would hash every request's path. One is all
        # there is (the send); a second would want that probe after all.
        fast = dict(fast_http or {})
        if len(fast) > 1:
            raise ValueError("RequestContext takes at most one fast HTTP path")
        # None: no method is "", so every request goes to the router.
        (self._fast_method, self._fast_path), self._fast_app = next(
            iter(fast.items()), (("", ""), app))
        self._websocket = dict(websocket or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            handler = self._websocket.get(scope["path"]) if scope["type"] == "websocket" else None
            if handler is not None:
                socket_client = logs.client.set(client_address(scope, self.trusted_proxies))
                try:
                    await handler(WebSocket(scope, receive, send))
                finally:
                    logs.client.reset(socket_client)
            else:
                await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        token = logs.request_id.set(rid)
        address = client_address(scope, self.trusted_proxies)
        client = logs.client.set(address)
        started = time.perf_counter()
        status = 500
        status_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_started
            if message["type"] == "http.response.start":
                status, status_started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        # Every request answers within the deadline: a database that hangs
        # becomes a 503 in the error shape, never a stuck client. Its body has
        # a deadline of its own (responses.read_body): a slow client is a 408,
        # not a database fault.
        deadline = scope[SCOPE_KEY] = Deadline(self.deadline_s, self.body_deadline_s)
        try:
            try:
                async with deadline:
                    if (scope["method"] == self._fast_method
                            and scope["path"] == self._fast_path):
                        await self._fast_app(scope, receive, send_with_id)
                    else:
                        await self.app(scope, receive, send_with_id)
            except Exception as exc:
                # Here rather than in Starlette's outermost handler, so that the
                # answer and the log line both carry the request id.
                if isinstance(exc, TimeoutError) and deadline.body_late:
                    late = BodyTimeout()  # the client's slowness, not the database's
                    response = error_response(late.status, late.message, late.headers)
                else:
                    response = unexpected(exc)
                if status_started:
                    raise
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__name__", "unmatched")
            labels = (scope["method"], route, status)
            child = _latency.get(labels)
            if child is None:
                child = metrics.HTTP_LATENCY.labels(scope["method"], route, str(status))
                if len(_latency) < _LATENCY_CACHED:
                    _latency[labels] = child
            child.observe(elapsed)
            log.info("request", extra={"method": scope["method"], "route": route,
                                       "status": status, "ms": round(elapsed * 1000, 2),
                                       "client": address})
            logs.request_id.reset(token)
            logs.client.reset(client)


def lift_deadline(scope: Scope) -> None:
    """For a stream that lives past the request deadline (`GET /events`):
    called once its headers are written, so the deadline still covers
    everything before them (authentication, the database)."""
    deadline = scope.get(SCOPE_KEY)
    if isinstance(deadline, Deadline):
        deadline.lift()


# Request ids: a random prefix per process and a counter, 16 hex digits
# (unique without a urandom read per request, unlike uuid4).
_RID_PREFIX = secrets.token_hex(4)
_rid_counter = itertools.count()


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 64 and value.isascii():
            return str(value.decode())
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFF:08x}"


async def broker_error(request: Request, exc: Exception) -> Response:
    """What the caller did wrong, as the contract's error."""
    assert isinstance(exc, BrokerError)
    return error_response(exc.status, exc.message, exc.headers)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method) in the same shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Cannot {request.method} {request.url.path}"
    else:
        message = exc.detail
    return error_response(exc.status_code, message, dict(exc.headers or {}))


def unexpected(exc: Exception) -> Response:
    """No bare 500 page: a 503 when the database is the cause, else a logged 500."""
    if isinstance(exc, store.DATABASE_DOWN):
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        return error_response(503, "Database unavailable")
    if isinstance(exc, store.DATABASE_BUSY):
        log.warning("database busy: a transaction ended by PostgreSQL",
                    extra={"error": type(exc).__name__})
        return error_response(503, "Database busy, try again", {"Retry-After": "1"})
    log.error("unexpected error", exc_info=exc)
    return error_response(500, "Internal server error")


EXCEPTION_HANDLERS: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    BrokerError: broker_error, HTTPException: http_exception}
