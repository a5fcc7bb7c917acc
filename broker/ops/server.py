"""How `smsdora serve` runs uvicorn: its one configuration (also used by
the tests and the benchmark) with the edges of an exposed broker (contract
section 12: header deadline and size, connection caps; the protocols in
broker/ops/protocols.py), the metrics listener, the graceful shutdown, and
the garbage collector's schedule (broker/ops/collector.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

from broker.ops.collector import Collector
from broker.ops.connections import (
    RESERVED_DESCRIPTORS,
    ConnectionGate,
    RateLimitedLog,
    descriptor_cap,
)
from broker.ops.protocols import protocols
from broker.settings import Settings

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("smsdora.server")
# Refused and timed-out connections, rate-limited (connections.RateLimitedLog).
connections_log = logging.getLogger("smsdora.connections")


def run(app: Any, settings: Settings, host: str, port: int,
        sockets: list[socket.socket] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully; on `sockets`
    when given (a worker of `serve --workers`: broker/ops/workers.py), else
    on host:port."""
    cap = max_connections(settings)
    if cap != settings.max_connections:
        log.warning("connection cap lowered to what the descriptor limit holds",
                    extra={"max_connections": cap, "wanted": settings.max_connections})
    DrainingServer = _draining_server()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, restores the handlers
    # it found and raises the signal again. Found handlers that end `main`
    # normally make that a clean exit (status 0, no traceback), and atexit
    # then runs: it stops the embedded PostgreSQL if this was its last user,
    # which a process killed by the default SIGTERM action would leave behind.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        DrainingServer(uvicorn_config(app, settings, host, port)).run(sockets=sockets)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _draining_server() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT the broker first stops taking sends (503 in the
        error shape for any that still arrive on an open connection), then
        uvicorn closes phone sockets with 1012 and the lifespan flushes
        last-seen (issue 4: graceful shutdown)."""

        collector: Collector | None = None
        collector_task: asyncio.Task[None] | None = None
        metrics_server: uvicorn.Server | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # With 10k sockets the default settings paused for 0.5-0.7 s
            # (issue 5): see broker/ops/collector.py.
            broker = self.config.app.state.broker  # type: ignore[union-attr]
            self.collector = Collector(broker.settings.gc_freeze_s)
            self.collector.start()
            self.collector_task = asyncio.get_running_loop().create_task(self.collector.run())
            metrics_app = getattr(self.config.app.state, "metrics_app", None)  # type: ignore[union-attr]
            if self.started and metrics_app is not None:
                self.metrics_server = await start_metrics_listener(metrics_app, broker.settings)

        async def shutdown(self, sockets: Any = None) -> None:
            # No new connections, then the phones' end (event streams are
            # requests uvicorn would otherwise wait for), then uvicorn's own.
            for server in self.servers:
                server.close()
            await self.config.app.state.broker.close_phones()  # type: ignore[union-attr]
            if self.collector_task is not None:
                self.collector_task.cancel()
            if self.collector is not None:
                self.collector.stop()
            await super().shutdown(sockets)
            if self.metrics_server is not None:
                await self.metrics_server.shutdown()

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.config.app.state.broker.draining = True  # type: ignore[union-attr]
            super().handle_exit(sig, frame)

    return DrainingServer


async def start_metrics_listener(app: Any, settings: Settings) -> uvicorn.Server | None:
    """`app` (GET /metrics and the detailed /health, broker/app.py) on
    SMSDORA_METRICS_ADDR, in this loop, with the edges of the main port.
    None when off, or when the address cannot be bound: logged as an
    error, and the API still serves (phones need it; a scrape does not)."""
    import uvicorn
    from uvicorn.lifespan.off import LifespanOff

    if settings.metrics_addr is None:
        return None
    host, port = settings.metrics_addr
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as err:
        log.error("metrics listener not started", extra={"address": address, "error": str(err)})
        return None
    config = uvicorn.Config(app, http=_listener_protocols(settings)[0], ws="none",
                            lifespan="off", log_config=None, timeout_graceful_shutdown=2,
                            proxy_headers=False)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = LifespanOff(config)
    await server.startup(sockets=[sock])
    log.info("metrics listener", extra={"address": address})
    return server


class _Stopped(Exception):
    """SIGTERM, raised again by uvicorn after its graceful shutdown."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped()


def uvicorn_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """The one uvicorn configuration of the broker (`serve` and the tests).

    WebSocket frames at most 64 KiB and uncompressed (contract section 4);
    the broker pings every `heartbeat_s` and ends a socket that does not
    answer within as long (section 4 presence). The accept queue holds 4,096
    connections (uvicorn's default, 2,048, overflowed when 10k phones came
    back at once after a restart; the kernel caps it at net.core.somaxconn).
    Each listener has its own connection gate (`max_connections`).
    """
    import uvicorn

    http_protocol, ws_protocol = _listener_protocols(settings)
    return uvicorn.Config(
        app, host=host, port=port, http=http_protocol, ws=ws_protocol,
        ws_max_size=65536,
        ws_per_message_deflate=False, ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s, loop="uvloop",
        log_config=None, lifespan="on", timeout_graceful_shutdown=8, backlog=4096,
        # Forwarded headers are read by broker/http/client.py, from the
        # configured trusted proxies only; uvicorn's would believe any
        # loopback peer and rewrite the client address before we see it.
        proxy_headers=False,
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
    )


def max_connections(settings: Settings) -> int:
    """`SMSDORA_MAX_CONNECTIONS`, lowered to what the descriptor limit holds."""
    return descriptor_cap(settings.max_connections, settings.pool_max + RESERVED_DESCRIPTORS)


def _listener_protocols(settings: Settings) -> tuple[type, type]:
    gate = ConnectionGate(max_connections(settings), settings.max_connections_per_address,
                          settings.trusted_proxies)
    return protocols(settings, gate, RateLimitedLog(connections_log))
