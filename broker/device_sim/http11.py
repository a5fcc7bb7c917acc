"""A small HTTP/1.1 client on asyncio streams, parsed by h11 (sans-I/O, as
STYLE.md likes it): one connection per request, gzip answered as OkHttp
answers it, and a streamed body for the event stream. Enough for the
simulated SMS Gateway app, with no HTTP client library to depend on."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11
import msgspec

CALL_TIMEOUT_S: Final = 10.0  # OkHttp's defaults: 10 s to connect, read, write
_READ: Final = 65536


class Unreachable(Exception):
    """No HTTP answer: refused, reset, timed out, or not HTTP at all."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def detail(self) -> str:
        """The status and the error shape's `message` (else the body's start)."""
        try:
            body = msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            body = None
        message = body.get("message") if isinstance(body, dict) else None
        return f"{self.status} {message or self.body[:200].decode(errors='replace')}"


class Exchange:
    """One request on its own connection: `open` sends it and reads the
    answer's head; `data` then reads the body, piece by piece."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)
        self._gunzip: zlib._Decompress | None = None
        self.status = 0
        self.headers: dict[str, str] = {}

    async def _next(self) -> h11.Event:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(await self._reader.read(_READ))
            elif event is h11.PAUSED:
                raise h11.RemoteProtocolError("a second answer on a closing connection")
            else:
                assert isinstance(event, h11.Event)
                return event

    async def send(self, method: str, target: str, headers: list[tuple[str, str]],
                   body: bytes | None) -> None:
        if body is not None:
            headers = [*headers, ("Content-Type", "application/json; charset=UTF-8"),
                       ("Content-Length", str(len(body)))]
        events: list[h11.Event] = [h11.Request(method=method, target=target, headers=headers)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        self._writer.write(b"".join(self._h11.send(e) or b"" for e in events))
        await self._writer.drain()
        while True:
            event = await self._next()
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):
                raise h11.RemoteProtocolError(f"no answer but {type(event).__name__}")
        self.status = event.status_code
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        if self.headers.get("content-encoding", "").lower() == "gzip":
            self._gunzip = zlib.decompressobj(wbits=31)

    async def data(self) -> bytes | None:
        """The next piece of the body; None at its end. Raises Unreachable
        when the connection breaks."""
        try:
            while True:
                event = await self._next()
                if isinstance(event, h11.Data):
                    chunk = bytes(event.data)
                    return self._gunzip.decompress(chunk) if self._gunzip else chunk
                if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return None
        except (OSError, h11.ProtocolError, zlib.error) as err:
            raise Unreachable(f"{type(err).__name__}: {err}") from None

    async def body(self) -> bytes:
        chunks = []
        while (chunk := await self.data()) is not None:
            chunks.append(chunk)
        return b"".join(chunks)

    def abort(self) -> None:
        """Cut the connection at once, as a lost network would."""
        self._writer.transport.abort()

    def close(self) -> None:
        self._writer.close()


class Client:
    """Requests to one origin; `prefix` (the base URL's path) goes before
    every path."""

    def __init__(self, base_url: str, user_agent: str, ca_file: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.user_agent = user_agent
        # The system's CAs, and `ca_file` as a CA the user installed on the phone.
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        if self._ssl is not None and ca_file is not None:
            self._ssl.load_verify_locations(cafile=ca_file)

    def _headers(self, authorization: str | None, extra: list[tuple[str, str]],
                 ) -> list[tuple[str, str]]:
        headers = [("Host", self.netloc), ("Accept-Encoding", "gzip"), ("Connection", "close"),
                   *extra]
        return headers + ([("Authorization", authorization)] if authorization else [])

    async def open(self, method: str, path: str, authorization: str | None = None,
                   body: bytes | None = None, *, user_agent: str | None = None,
                   accept: str | None = "application/json") -> Exchange:
        """Send a request and read its answer's head (within CALL_TIMEOUT_S);
        the caller reads the body and closes the exchange."""
        extra = [("User-Agent", user_agent or self.user_agent)]
        if accept:
            extra.append(("Accept", accept))
        exchange: Exchange | None = None
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self.host, self.port,
                                                               ssl=self._ssl, limit=_READ)
                exchange = Exchange(reader, writer)
                await exchange.send(method, self.prefix + path,
                                    self._headers(authorization, extra), body)
        except (OSError, TimeoutError, h11.ProtocolError) as err:
            if exchange is not None:
                exchange.abort()
            raise Unreachable(f"{method} {path}: {type(err).__name__}: {err}") from None
        return exchange

    async def call(self, method: str, path: str, authorization: str | None = None,
                   body: bytes | None = None) -> Answer:
        """One request and its whole answer (the head and the body each
        within CALL_TIMEOUT_S)."""
        exchange = await self.open(method, path, authorization, body)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                raw = await exchange.body()
        except TimeoutError:
            raise Unreachable(f"{method} {path}: no answer within {CALL_TIMEOUT_S:g} s") from None
        finally:
            with contextlib.suppress(OSError):
                exchange.close()
        return Answer(exchange.status, exchange.headers, raw)
