"""`create_app(settings, database_url)`: routes, middleware and lifespan only."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
import uuid
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import store
from broker.http import api as http_api
from broker.ops import logs
from broker.ops import metrics
from broker.transports.ws.endpoint import CLOSE_POLICY, CLOSE_RESTART, device_socket
from broker.delivery.dispatch import Dispatcher
from broker.errors import BrokerError
from broker.keys import KeyCache, RateWindow
from broker.store.listener import Listener
from broker.lookups import Coalescer
from broker.http.openapi import openapi_endpoint
from broker.delivery.presence import Presence
from broker.settings import Settings
from broker.delivery.sweeper import Sweeper

log = logging.getLogger("smsdora.app")


class Broker:
    """Everything one broker process holds; reached from handlers as
    `request.app.state.broker`."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.database_url = database_url
        self.secret = settings.server_secret()
        self.presence = Presence()
        self.rate_window = RateWindow()
        self.key_cache: KeyCache[store.KeyRow] = KeyCache()
        self.started_mono = time.monotonic()
        self.draining = False  # set on SIGTERM: no new sends
        self.pool: Any = None
        self.dispatcher: Dispatcher = None  # type: ignore[assignment]
        # Device sockets' token checks: one query for the phones of a storm.
        self.devices_by_token: Coalescer[str, store.DeviceRow] = Coalescer(self._devices_by_token)
        self._flusher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.pool = await store.create_pool(self.database_url, min_size=self.settings.pool_min,
                                            max_size=self.settings.pool_max)
        self.dispatcher = Dispatcher(self.pool, self.presence,
                                     max_queued=self.settings.max_queued_per_account)
        await store.forget_node(self.pool, self.settings.node)
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_loop())
        self._sweeper = loop.create_task(Sweeper(self.pool, self.presence, self.settings).run())
        self._listener = Listener(
            self.database_url,
            {store.DEVICE_DEACTIVATED: self._on_deactivated, store.KEY_CHANGED: self.key_cache.drop},
            on_connect=self.key_cache.clear)
        self._listener.start()
        await asyncio.wait_for(self._listener.connected.wait(), 10)

    async def _devices_by_token(self, prefixes: list[str]) -> dict[str, store.DeviceRow]:
        return await store.devices_by_token_prefix(self.pool, prefixes)

    def keys_cached(self) -> bool:
        """The key cache is trusted only while change notices can reach us."""
        return self._listener is not None and self._listener.connected.is_set()

    def _on_deactivated(self, payload: str) -> None:
        """A device was deactivated (maybe by the CLI): drop its socket now."""
        try:
            conn = self.presence.get(uuid.UUID(payload))
        except ValueError:
            return
        if conn is not None:
            task = asyncio.get_running_loop().create_task(
                conn.socket.close(CLOSE_POLICY, "device deactivated"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
        await self.dispatcher.close()
        await self.devices_by_token.close()
        for conn in self.presence.all_connections():
            await conn.socket.close(CLOSE_RESTART, "broker restarting")
        for task in (self._flusher, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush_last_seen()
        await self.pool.close()

    async def flush_last_seen(self) -> None:
        ids, seen, health, versions = self.presence.take_dirty()
        if ids:
            online = [self.presence.get(i) is not None for i in ids]
            await store.flush_last_seen(self.pool, ids, seen, health, versions, online,
                                        self.settings.node)

    async def _flush_loop(self) -> None:
        """Last-seen reaches PostgreSQL in batches, not once per frame."""
        while True:
            await asyncio.sleep(self.settings.last_seen_flush_s)
            try:
                await self.flush_last_seen()
            except store.DATABASE_DOWN as err:
                log.warning("last-seen flush failed", extra={"error": type(err).__name__})
            except Exception:  # noqa: BLE001 - logged loudly; one bad batch must not end presence
                log.exception("last-seen flush failed: batch dropped")


class RequestContext:
    """Request id, one structured log line and the latency histogram per
    request; and the two hot paths (`POST /messages/send`, the device socket)
    handed to their handlers without Starlette's router."""

    def __init__(self, app: ASGIApp, deadline_s: float = 5.0) -> None:
        self.app = app
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and scope["path"] == "/devices/ws":
                # Every frame a phone is sent passes through the send callable:
                # without the router's exception wrapper around it (issue 5).
                await device_socket(WebSocket(scope, receive, send))
            else:
                await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = 500
        status_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_started
            if message["type"] == "http.response.start":
                status, status_started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            try:
                # Every request answers within the deadline: a database that
                # hangs becomes a 503 in the error shape, never a stuck client.
                async with asyncio.timeout(self.deadline_s):
                    if scope["method"] == "POST" and scope["path"] == "/messages/send":
                        # The hot path skips Starlette's router and its two
                        # exception wrappers (issue 5: about 8 % of a send).
                        scope["endpoint"] = http_api.send_message
                        await http_api.send_message_asgi(scope, receive, send_with_id)
                    else:
                        await self.app(scope, receive, send_with_id)
            except Exception as exc:  # noqa: BLE001 - answered in the error shape, logged
                # Here rather than in Starlette's outermost handler, so that the
                # answer and the log line both carry the request id.
                response = _unexpected(exc)
                if status_started:
                    raise
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            endpoint = scope.get("endpoint")
            route = getattr(endpoint, "__name__", "unmatched")
            metrics.HTTP_LATENCY.labels(scope["method"], route, str(status)).observe(elapsed)
            log.info("request", extra={"method": scope["method"], "route": route,
                                       "status": status, "ms": round(elapsed * 1000, 2)})
            logs.request_id.reset(token)


# Request ids: a random prefix per process and a counter, 16 hex digits
# (unique without a urandom read per request, unlike uuid4).
_RID_PREFIX = secrets.token_hex(4)
_rid_counter = itertools.count()


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 64 and value.isascii():
            return str(value.decode())
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFFFF:08x}"


async def _broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    return http_api.error_response(exc.status, exc.message, exc.headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Cannot {request.method} {request.url.path}"
    else:
        message = exc.detail
    return http_api.error_response(exc.status_code, message, dict(exc.headers or {}))


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, store.DATABASE_DOWN):
        log.warning("database unavailable", extra={"error": type(exc).__name__})
        return http_api.error_response(503, "Database unavailable")
    log.error("unexpected error", exc_info=exc)
    return http_api.error_response(500, "Internal server error")


def create_app(settings: Settings, database_url: str) -> Starlette:
    broker = Broker(settings, database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broker.start()
        try:
            yield
        finally:
            await broker.stop()

    routes = [
        Route("/messages/send", http_api.send_message, methods=["POST"]),
        Route("/messages", http_api.list_messages, methods=["GET"]),
        Route("/messages/{message_id}", http_api.get_message, methods=["GET"]),
        Route("/devices", http_api.devices, methods=["GET", "POST"]),
        Route("/health", http_api.health, methods=["GET"]),
        Route("/metrics", http_api.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        WebSocketRoute("/devices/ws", device_socket),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan,
        exception_handlers={BrokerError: _broker_error, HTTPException: _http_exception},
    )
    app.state.broker = broker
    app.add_middleware(RequestContext, deadline_s=settings.request_timeout_s)
    return app
