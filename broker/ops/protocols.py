"""uvicorn's HTTP and WebSocket protocols as the broker runs them on an
exposed port (CONTRACT section 12): the connection gate (caps in all and per
address), the deadline and size of a request head, the lingering close after
a refusal, dead peers dropped, every refusal in the contract's error shape.
broker/ops/server.py builds the listeners with them."""

from __future__ import annotations

import asyncio
import http
import socket
from typing import Any

from broker.ops import metrics
from broker.ops.connections import ConnectionGate, RateLimitedLog, Refusal
from broker.settings import Settings
from protocol.api import ErrorBody
from protocol.api import encoder as api_encoder

# After a refusal (400, 431): how long, and how much, of what the client
# still sends is read and dropped before the socket is closed.
LINGER_S = 2.0
# A peer that stops acknowledging what the broker writes (a phone gone
# without a FIN: out of coverage, battery pulled) is dropped after this
# instead of the kernel's ~15 minutes of retransmits. An SSE phone has no
# pong to miss: the keepalive comment every 15 s is what goes unacknowledged,
# so its stream ends, and it is offline, within about 75 s.
DEAD_PEER_MS = 60_000
LINGER_BYTES = 1 << 20


def protocols(settings: Settings, gate: ConnectionGate, refusals: RateLimitedLog) -> tuple[type, type]:
    """The HTTP and WebSocket protocol classes of one listener, sharing its
    connection gate."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    header_timeout_s = settings.header_timeout_s
    max_head = settings.max_header_bytes

    class BrokerWebSocketProtocol(WebSocketsSansIOProtocol):
        """uvicorn's, giving back the connection's place in the gate when
        the socket ends (BrokerHttpProtocol hands it over at the upgrade)."""

        gate_key: str | None = None

        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                if self.gate_key is not None:
                    gate.release(self.gate_key)
                    self.gate_key = None

    class OneWriteCycle(RequestResponseCycle):
        """uvicorn's request cycle, writing a response of known length (a
        `content-length` head, not HEAD) as one write: its head is held
        until the body comes, and both go out together. uvicorn writes them
        apart: two system calls and two segments a response, the client
        woken twice. Anything else (a stream, HEAD, a body in pieces, the
        socket paused) writes the held head first, then goes as uvicorn's."""

        _head: bytes | None = None

        async def send(self, message: Any) -> None:
            head = self._head
            if head is None:
                if (message["type"] == "http.response.start" and not self.response_started
                        and self.scope["method"] != "HEAD" and _has_length(message)):
                    transport, capture = self.transport, _Capture()
                    self.transport = capture  # type: ignore[assignment]
                    try:
                        await super().send(message)  # its checks and bookkeeping, one write
                    finally:
                        self.transport = transport
                    self._head = capture.data
                    return
                await super().send(message)
                return
            self._head = None
            if (message["type"] == "http.response.body" and not message.get("more_body", False)
                    and not self.disconnected and not self.flow.write_paused):
                body = message.get("body", b"")
                if len(body) == self.expected_content_length:
                    # What uvicorn's send does with the last piece of a body.
                    self.transport.write(head + body)
                    self.expected_content_length = 0
                    self.response_complete = True
                    self.message_event.set()
                    if not self.keep_alive:
                        self.transport.close()
                    self.on_response()
                    return
            if not self.disconnected:
                self.transport.write(head)
            await super().send(message)

    class BrokerHttpProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with the edges of an exposed broker
        (contract section 12), which uvicorn's httptools path lacks:

        - a connection past the gate's caps is closed at once;
        - a request head must be complete within `header_timeout_s` of the
          moment the client owes us one: from the connection, and on a
          kept-alive connection from the end of the previous answer (idle
          time counts; uvicorn's own keep-alive timer stops at the first
          byte, ours does not) or of the previous request, if the client
          pipelines. After an answer given before its request's body was
          all in, the rest of the body has as long;
        - a request head is at most `max_header_bytes`, counted as it
          arrives (httptools buffers a header line whole before any
          callback): past it, 431. A head that starts in the middle of a
          read, after a pipelined body, is counted from the next piece, so
          it may take up to twice the limit before the 431.

        And it lets go of its parser once a phone's connection is upgraded
        to a WebSocket. The parser and the protocol refer to each other;
        after the upgrade that cycle is garbage only the cyclic collector can
        free, one per phone that connects, and a freeze by
        broker/ops/collector.py while a handshake is in flight would keep it
        for good (measured: 573 of 2,000 handshakes, 20 objects each).
        `connection_lost` already does the same for plain HTTP."""

        _gate_key: str | None = None
        # When the client began to owe us a head (or the rest of a body), and
        # the one timer that checks it: armed at most once per deadline, not
        # per request (a timer costs 4-5 µs in uvloop; a kept-alive client may
        # send thousands of requests in 10 s). A request in time just clears
        # `_owed_at`; the timer then finds nothing owed, or a later start.
        _owed_at: float | None = None
        _timer: asyncio.TimerHandle | None = None
        _in_head = True  # the next bytes are (part of) a request head
        _head_bytes = 0
        _lingering: int | None = None  # after a refusal: the bytes dropped since

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = self.client[0] if self.client else None
            admitted = gate.admit(peer)
            if isinstance(admitted, Refusal):
                metrics.CONNECTIONS_CLOSED.labels(admitted.value).inc()
                refusals.warning("connection refused", peer or "-", reason=admitted.value)
                transport.close()
                return
            self._gate_key = admitted
            _drop_dead_peers(transport)
            self._owed()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            if self._gate_key is not None:
                gate.release(self._gate_key)
                self._gate_key = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._gate_key is None:
                return  # refused: closing
            if self._lingering is not None:
                self._lingering += len(data)
                if self._lingering > LINGER_BYTES:
                    self.transport.close()
                return
            if self._in_head:
                if self._head_bytes + len(data) <= max_head:
                    self._head_bytes += len(data)
                    super().data_received(data)
                    return
            elif len(data) <= max_head:
                super().data_received(data)
                return
            self._feed_in_pieces(memoryview(data))

        def _feed_in_pieces(self, view: memoryview) -> None:
            """At most what the head may still take while in a head, else
            `max_head` at a time (httptools takes a memoryview as is)."""
            while view:
                if self._in_head:
                    room = max_head - self._head_bytes
                    if room <= 0:
                        self._refuse_head()
                        return
                    piece = view[:room]
                    self._head_bytes += len(piece)
                else:
                    piece = view[:max_head]
                view = view[len(piece):]
                super().data_received(piece)  # type: ignore[arg-type]
                if (self._lingering is not None or self.parser is None
                        or self.transport.is_closing()):
                    return

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._owed()  # also while our answer to an earlier request is pending

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._not_owed()
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before and type(self.cycle) is RequestResponseCycle:
                # Its task has not run yet: every send of it is ours.
                self.cycle.__class__ = OneWriteCycle

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if self.parser is not None and self.parser.should_upgrade() and self._should_upgrade():
                return  # a WebSocket: handle_websocket_upgrade comes next
            self._in_head, self._head_bytes = True, 0
            if self.cycle is None or self.cycle.response_complete:
                self._owed()  # answered before the body was all in: now the next head
            # else: the client may wait for our answer before its next request

        def on_response_complete(self) -> None:
            more = bool(self.pipeline)
            super().on_response_complete()
            if not more and not self.transport.is_closing():
                self._owed()

        def handle_websocket_upgrade(self) -> None:
            self._stop_timer()
            super().handle_websocket_upgrade()
            self.parser = None  # type: ignore[assignment]
            socket_protocol = self.transport.get_protocol()
            if isinstance(socket_protocol, BrokerWebSocketProtocol):
                socket_protocol.gate_key, self._gate_key = self._gate_key, None

        def _owed(self) -> None:
            """The client owes us bytes: start the clock, unless running."""
            if self._owed_at is None:
                self._owed_at = self.loop.time()
                if self._timer is None:
                    self._timer = self.loop.call_at(self._owed_at + header_timeout_s, self._late)

        def _not_owed(self) -> None:
            self._owed_at = None

        def _stop_timer(self) -> None:
            self._owed_at = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _late(self) -> None:
            self._timer = None
            if self._owed_at is None or self.transport.is_closing():
                return
            due = self._owed_at + header_timeout_s
            if self.loop.time() < due:  # owed again since the timer was set
                self._timer = self.loop.call_at(due, self._late)
                return
            reason = "header_timeout" if self._in_head else "body_timeout"
            metrics.CONNECTIONS_CLOSED.labels(reason).inc()
            refusals.warning("request head not complete in time" if self._in_head
                             else "request body not complete in time", self._peer())
            self.transport.close()

        def _refuse_head(self) -> None:
            metrics.CONNECTIONS_CLOSED.labels("header_too_large").inc()
            refusals.warning("request head too large", self._peer())
            self._refuse(431, "Request header fields too large")

        def _peer(self) -> str:
            return self.client[0] if self.client else "-"

        def send_400_response(self, msg: str) -> None:
            """A request httptools cannot parse (a malformed header, say)
            answered in the contract's error shape, not uvicorn's plain
            text: every error is JSON (contract section 3, Errors)."""
            self._refuse(400, msg)

        def _refuse(self, status: int, message: str) -> None:
            """The error shape, then a lingering close: closing a socket
            with unread bytes sends a reset, which can wipe the answer out
            of the client's buffers before it reads it. So: our side shut
            (FIN), what still comes discarded, and the socket closed when
            the client closes, after `LINGER_S`, or past `LINGER_BYTES`.
            Only the close while an answer to an earlier request is being
            written (it would be cut)."""
            self._stop_timer()
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()
                return
            body = api_encoder.encode(ErrorBody(statusCode=status, message=message,
                                                error=http.HTTPStatus(status).phrase))
            content = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend([b"content-type: application/json\r\n",
                            b"content-length: " + str(len(body)).encode() + b"\r\n",
                            b"connection: close\r\n\r\n", body])
            self.transport.write(b"".join(content))
            if not self.transport.can_write_eof():  # TLS
                self.transport.close()
                return
            self.transport.write_eof()
            self._lingering = 0  # bytes dropped since; the client's EOF closes the socket
            self._timer = self.loop.call_later(LINGER_S, self.transport.close)

    return BrokerHttpProtocol, BrokerWebSocketProtocol


class _Capture:
    """Stands in for the transport while uvicorn writes a response head."""

    data = b""

    def write(self, data: bytes) -> None:
        self.data = data


def _has_length(message: Any) -> bool:
    return any(name.lower() == b"content-length" for name, _ in message.get("headers", ()))


def _drop_dead_peers(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, DEAD_PEER_MS)
    except OSError:
        pass  # not a TCP socket after all: nothing to bound
