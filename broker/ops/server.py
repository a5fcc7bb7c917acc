"""How `smsdora serve` runs uvicorn: its one configuration (also used by
the tests and the benchmark), the graceful shutdown, and the garbage
collector's schedule (broker/ops/collector.py)."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Any

from broker.ops.collector import Collector
from broker.settings import Settings
from protocol.api import ErrorBody
from protocol.api import encoder as api_encoder

if TYPE_CHECKING:
    import uvicorn


def run(app: Any, settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully."""
    DrainingServer = _draining_server()
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, restores the handlers
    # it found and raises the signal again. Found handlers that end `main`
    # normally make that a clean exit (status 0, no traceback), and atexit
    # then runs: it stops the embedded PostgreSQL if this was its last user,
    # which a process killed by the default SIGTERM action would leave behind.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        DrainingServer(uvicorn_config(app, settings, host, port)).run()
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

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # With 10k sockets the default settings paused for 0.5-0.7 s
            # (issue 5): see broker/ops/collector.py.
            broker = self.config.app.state.broker  # type: ignore[union-attr]
            self.collector = Collector(broker.settings.gc_freeze_s)
            self.collector.start()
            self.collector_task = asyncio.get_running_loop().create_task(self.collector.run())

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

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.config.app.state.broker.draining = True  # type: ignore[union-attr]
            super().handle_exit(sig, frame)

    return DrainingServer


class _Stopped(Exception):
    """SIGTERM, raised again by uvicorn after its graceful shutdown."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped()


def _http_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BrokerHttpProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, letting go of its parser once a
        phone's connection is upgraded to a WebSocket. The parser and the
        protocol refer to each other; after the upgrade that cycle is garbage
        only the cyclic collector can free, one per phone that connects, and
        a freeze by broker/ops/collector.py while a handshake is in flight would
        keep it for good (measured: 573 of 2,000 handshakes, 20 objects
        each). `connection_lost` already does the same for plain HTTP."""

        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            self.parser = None  # type: ignore[assignment]

        def send_400_response(self, msg: str) -> None:
            """A request httptools cannot parse (a malformed header, say)
            answered in the contract's error shape, not uvicorn's plain
            text: every error is JSON (contract section 3, Errors)."""
            body = api_encoder.encode(ErrorBody(statusCode=400, message=msg,
                                                error="Bad Request"))
            content = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"content-type: application/json\r\n",
                            b"content-length: " + str(len(body)).encode() + b"\r\n",
                            b"connection: close\r\n\r\n", body])
            self.transport.write(b"".join(content))
            self.transport.close()

    return BrokerHttpProtocol


def uvicorn_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """The one uvicorn configuration of the broker (`serve` and the tests).

    WebSocket frames at most 64 KiB and uncompressed (contract section 4);
    the broker pings every `heartbeat_s` and ends a socket that does not
    answer within as long (section 4 presence). The accept queue holds 4,096
    connections (uvicorn's default, 2,048, overflowed when 10k phones came
    back at once after a restart; the kernel caps it at net.core.somaxconn).
    """
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http=_http_protocol(), ws="websockets-sansio",
        ws_max_size=65536,
        ws_per_message_deflate=False, ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s, loop="uvloop",
        log_config=None, lifespan="on", timeout_graceful_shutdown=8, backlog=4096,
        ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
    )
