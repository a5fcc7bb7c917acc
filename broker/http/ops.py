"""`/health` and `/metrics` (contract section 3, Operations; section 12).

On the main port, which strangers reach: `/health` says only whether the
broker and its database answer; `/metrics` is there only with
`SMSDORA_METRICS_TOKEN`, for `Authorization: Bearer <token>`, which also
gets the detailed `/health`. On the metrics listener (SMSDORA_METRICS_ADDR,
loopback by default): both, in full, without a token."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING, Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker import store
from broker.errors import Unauthorized
from broker.http.responses import bare
from broker.ops import metrics
from protocol.api import HealthBody

if TYPE_CHECKING:
    from broker.runtime import Broker

log = logging.getLogger("smsdora.http")
PING_TIMEOUT_S = 2.0


async def health(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    return await _health(broker, detailed=_has_metrics_token(request, broker))


async def metrics_endpoint(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    if broker.settings.metrics_token is None:
        raise HTTPException(404)  # "Cannot GET /metrics", as for any path that is not there
    if not _has_metrics_token(request, broker):
        raise Unauthorized("Invalid metrics token", headers={"WWW-Authenticate": "Bearer"})
    return _metrics()


async def listener_health(request: Request) -> Response:
    return await _health(request.app.state.broker, detailed=True)


async def listener_metrics(request: Request) -> Response:
    return _metrics()


# The metrics listener's routes (broker/app.py create_metrics_app).
LISTENER_ROUTES = [Route("/metrics", listener_metrics, methods=["GET"]),
                   Route("/health", listener_health, methods=["GET"])]


async def _health(broker: Broker, *, detailed: bool) -> Response:
    database: Literal["ok", "unreachable"] = "ok"
    try:
        await asyncio.wait_for(store.ping(broker.pool), timeout=PING_TIMEOUT_S)
    except store.DATABASE_DOWN as err:
        log.warning("health: database unreachable", extra={"error": type(err).__name__})
        database = "unreachable"
    status: Literal["ok", "degraded"] = "ok" if database == "ok" else "degraded"
    if detailed:
        body = HealthBody(status=status, database=database, node=broker.settings.node,
                          devicesOnline=broker.presence.online_count(),
                          uptimeSeconds=int(time.monotonic() - broker.started_mono))
    else:
        body = HealthBody(status=status, database=database)
    return bare(body, 200 if status == "ok" else 503)


def _metrics() -> Response:
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)


def _has_metrics_token(request: Request, broker: Broker) -> bool:
    token = broker.settings.metrics_token
    if token is None:
        return False
    for value in request.headers.getlist("authorization"):
        scheme, _, given = value.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
            return True
    return False
