"""`create_app(settings, database_url)`: routes, middleware and lifespan only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from broker import http
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
    routes = [*http.routes(), WebSocketRoute("/devices/ws", device_socket), *smsgate.routes()]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=http.EXCEPTION_HANDLERS)
    app.state.broker = broker
    # The hot paths go to their handlers from the middleware, without the router.
    app.add_middleware(http.RequestContext, deadline_s=settings.request_timeout_s,
                       fast_http=http.fast_http(), websocket={"/devices/ws": device_socket})
    return app
