"""`/health` and `/metrics` (contract section 3, Operations): no key."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Literal

from starlette.requests import Request
from starlette.responses import Response

from broker import store
from broker.http.responses import bare
from broker.ops import metrics
from protocol.api import HealthBody

if TYPE_CHECKING:
    from broker.runtime import Broker

log = logging.getLogger("smsdora.http")
PING_TIMEOUT_S = 2.0


async def health(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    database: Literal["ok", "unreachable"] = "ok"
    try:
        await asyncio.wait_for(store.ping(broker.pool), timeout=PING_TIMEOUT_S)
    except store.DATABASE_DOWN as err:
        log.warning("health: database unreachable", extra={"error": type(err).__name__})
        database = "unreachable"
    body = HealthBody(status="ok" if database == "ok" else "degraded", database=database,
                      node=broker.settings.node, devicesOnline=broker.presence.online_count(),
                      uptimeSeconds=int(time.monotonic() - broker.started_mono))
    return bare(body, 200 if body.status == "ok" else 503)


async def metrics_endpoint(request: Request) -> Response:
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)
