"""The sender's HTTP client: HTTP/1.1 by h11 (the protocol's state machine)
over asyncio streams, with kept-alive connections per origin.

Why not httpx, which the broker used first: eight POSTs at once to one
local receiver, httpx (httpcore's pool) made 700-800 a second, this 13,000-
14,000 (docs/PERFORMANCE.md, Webhooks). A webhook attempt needs one request
shape: POST, a body, no redirects, no cookies, no proxy, one answer whose
body is read (up to a bound) and dropped.

Every connection is made only to an address webhooks may reach
(addresses.py): the name is resolved here, each address checked, the
socket opened to a checked one, TLS verified against the name."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from broker.webhooks import addresses

KEEP_IDLE_S = 30.0  # an idle connection is closed after this
MAX_IDLE_PER_ORIGIN = 8
READ_CHUNK = 65536


class RequestFailed(Exception):
    """No answer: the connection could not be made, broke, or spoke no HTTP."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


Origin = tuple[str, str, int]  # scheme, host, port


class Client:
    def __init__(self, allow_private: bool, max_answer_bytes: int, user_agent: str,
                 tls: ssl.SSLContext | None = None) -> None:
        self.allow_private = allow_private
        self.max_answer_bytes = max_answer_bytes
        self.user_agent = user_agent
        self._tls = tls or ssl.create_default_context()  # the system's CAs
        self.connections_made = 0
        self._idle: dict[Origin, list[_Conn]] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST `body` to `url`; the answer's status and headers (its body
        read up to the bound and dropped). A kept-alive connection that
        gives no answer at all (the server closed it while it was idle) is
        replaced by a new one, once."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = (parts.scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if port == (443 if parts.scheme == "https" else 80) else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" + (f":{port}" if host_header != host else "")
        request = h11.Request(method="POST", target=target, headers=[
            ("host", host_header), ("user-agent", self.user_agent),
            ("content-length", str(len(body))), *headers.items()])
        conn = self._take_idle(origin)
        fresh = conn is None
        if conn is None:
            conn = await self._connect(origin)
        try:
            return await self._exchange(origin, conn, request, body)
        except RequestFailed:
            if fresh:
                raise
        conn = await self._connect(origin)  # the kept one was dead: once on a new one
        return await self._exchange(origin, conn, request, body)

    async def _exchange(self, origin: Origin, conn: _Conn, request: h11.Request,
                        body: bytes) -> Answer:
        keep = False
        try:
            data = conn.h11.send(request) or b""
            data += conn.h11.send(h11.Data(data=body)) or b""
            data += conn.h11.send(h11.EndOfMessage()) or b""
            conn.writer.write(data)
            await conn.writer.drain()
            answer: Answer | None = None
            read = 0
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    chunk = await conn.reader.read(READ_CHUNK)
                    if not chunk and answer is None:
                        raise RequestFailed("the connection was closed before an answer")
                    conn.h11.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    answer = Answer(event.status_code, {
                        k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers})
                elif isinstance(event, h11.Data):
                    read += len(event.data)
                    if read > self.max_answer_bytes:
                        assert answer is not None
                        return answer  # a long answer is cut: the connection with it
                elif isinstance(event, h11.EndOfMessage):
                    assert answer is not None
                    keep = (conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE)
                    return answer
                elif isinstance(event, h11.ConnectionClosed):
                    if answer is None:
                        raise RequestFailed("the connection was closed before an answer")
                    return answer
        except (OSError, h11.ProtocolError, ssl.SSLError) as err:
            raise RequestFailed(str(err) or type(err).__name__) from None
        finally:
            if keep:
                conn.h11.start_next_cycle()
                self._put_idle(origin, conn)
            else:
                conn.close()

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            found = await addresses.resolve(host, port)
        except addresses.NotAllowed as err:
            raise RequestFailed(str(err)) from None
        usable = [ip for ip in found if self.allow_private or addresses.allowed(ip)]
        if not usable:
            raise RequestFailed(f"{host} resolves to an address webhooks may not use")
        last: Exception | None = None
        for ip in usable:
            try:
                reader, writer = await asyncio.open_connection(
                    str(ip), port, ssl=self._tls if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None)
                self.connections_made += 1
                return _Conn(reader, writer)
            except (OSError, ssl.SSLError) as err:
                last = err
        raise RequestFailed(str(last) or type(last).__name__)

    def _take_idle(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < KEEP_IDLE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def _put_idle(self, origin: Origin, conn: _Conn) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await conn.writer.wait_closed()
        self._idle.clear()
