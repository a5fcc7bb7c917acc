"""`create_app(settings, database_url)`: routes, middleware and lifespan only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Router, WebSocketRoute

from broker import dashboard, http
from broker.http.ops import LISTENER_ROUTES
from broker.runtime import Broker
from broker.settings import Settings
from broker.transports import smsgate
from broker.transports.ws.endpoint import device_socket


def create_app(settings: Settings, database_url: str) -> Starlette:
    broker = Broker(settings, database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broker.start()
        try:
            yield
        finally:
            await broker.stop()

    # The HTTP routes come from the endpoint declarations (broker/http/endpoints.py);
    # the phones' transports bring their own (the SMS Gateway app's mobile API).
    routes = [*http.routes(), WebSocketRoute("/devices/ws", device_socket), *smsgate.routes(),
              *dashboard.routes()]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=http.EXCEPTION_HANDLERS)
    _no_slash_redirects(app.router)
    app.state.broker = broker
    # The hot paths go to their handlers from the middleware, without the router.
    app.add_middleware(http.RequestContext, deadline_s=settings.request_timeout_s,
                       fast_http=http.fast_http(), websocket={"/devices/ws": device_socket},
                       body_deadline_s=settings.body_timeout_s,
                       trusted_proxies=settings.trusted_proxies)
    # What `serve` runs on SMSDORA_METRICS_ADDR (broker/ops/server.py).
    app.state.metrics_app = create_metrics_app(broker)
    return app


def create_metrics_app(broker: Broker) -> Starlette:
    """GET /metrics and the detailed /health, for the metrics listener: the
    same broker, no lifespan of its own (the main app's runs it)."""
    app = Starlette(routes=LISTENER_ROUTES, exception_handlers=http.EXCEPTION_HANDLERS)
    _no_slash_redirects(app.router)
    app.state.broker = broker
    app.add_middleware(http.RequestContext, deadline_s=broker.settings.request_timeout_s,
                       trusted_proxies=broker.settings.trusted_proxies)
    return app


def _no_slash_redirects(router: Router) -> None:
    """Starlette answers `/devices/` with a redirect to `/devices` built
    from the `Host` header (and `/api/mobile/v1` with one to
    `/api/mobile/v1/`): anyone could have the broker send a client to
    another host (contract section 12). Off, in every mounted router too:
    such a path is a 404 like any other that is not there."""
    router.redirect_slashes = False
    stack: list[BaseRoute] = list(router.routes)
    while stack:
        route = stack.pop()
        if isinstance(route, Mount) and isinstance(route.app, Router):
            route.app.redirect_slashes = False
            stack.extend(route.app.routes)
