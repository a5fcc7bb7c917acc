"""broker/webhooks/client.py against real sockets on loopback: kept-alive
connections, a server that closed one, answers cut at the bound, broken
peers, the address guard, and TLS verified against the name."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from broker.ops import tls
from broker.webhooks.client import Client, RequestFailed

pytestmark = pytest.mark.timeout(20)
OK = b"HTTP/1.1 204 No Content\r\nretry-after: 7\r\n\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


class Server:
    def __init__(self, handler: Handler, context: ssl.SSLContext | None = None) -> None:
        self.handler, self.context = handler, context
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.context else 'http'}://127.0.0.1:{port}/hook?x=1"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[Server, str]]]]:
    started: list[Server] = []

    async def make(handler: Handler, context: ssl.SSLContext | None = None) -> tuple[Server, str]:
        s = Server(handler, context)
        url = await s.start()
        started.append(s)
        return s, url

    yield make
    for s in started:
        s.server.close()


def client(**kwargs: object) -> Client:
    return Client(allow_private=True, max_answer_bytes=1024, user_agent="test/1", **kwargs)  # type: ignore[arg-type]


async def test_requests_share_a_kept_alive_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            server.requests.append(await read_request(reader))
            writer.write(OK)
            await writer.drain()

    server, url = await serve(handler)
    c = client()
    for i in range(3):
        answer = await c.post(url, b'{"n":%d}' % i, {"content-type": "application/json"})
        assert answer.status == 204 and answer.headers["retry-after"] == "7"
    assert server.connections == 1 and c.connections_made == 1
    first = server.requests[0]
    assert first.startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    assert b"host: 127.0.0.1:" in first and b"user-agent: test/1" in first
    assert first.endswith(b'{"n":0}')
    await c.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced_once(serve) -> None:  # type: ignore[no-untyped-def]
    async def one_per_connection(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        server.requests.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()  # then closed, though the client was told nothing

    server, url = await serve(one_per_connection)
    c = client()
    assert (await c.post(url, b"{}", {})).status == 204
    await asyncio.sleep(0.05)
    assert (await c.post(url, b"{}", {})).status == 204
    assert len(server.requests) == 2 and server.connections == 2
    await c.close()


async def test_a_long_answer_is_cut_and_its_connection_not_kept(serve) -> None:  # type: ignore[no-untyped-def]
    async def long_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 100000)
            await writer.drain()

    server, url = await serve(long_answer)
    c = client()
    assert (await c.post(url, b"{}", {})).status == 200
    assert (await c.post(url, b"{}", {})).status == 200
    assert server.connections == 2, "the cut connection was not reused"
    await c.close()


@pytest.mark.parametrize("reply", [b"", b"SMTP ready\r\n\r\n", b"HTTP/1.1 20"])
async def test_no_answer_or_no_http_is_a_failure(serve, reply: bytes) -> None:  # type: ignore[no-untyped-def]
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    _, url = await serve(broken)
    with pytest.raises(RequestFailed):
        await client().post(url, b"{}", {})


async def test_a_refused_connection_is_a_failure() -> None:
    with pytest.raises(RequestFailed):
        await client().post("http://127.0.0.1:9/hook", b"{}", {})


async def test_loopback_is_refused_unless_allowed(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.requests.append(await read_request(reader))
        writer.write(OK)

    server, url = await serve(handler)
    guarded = Client(allow_private=False, max_answer_bytes=1024, user_agent="t")
    with pytest.raises(RequestFailed, match="may not use"):
        await guarded.post(url, b"{}", {})
    assert server.connections == 0


async def test_tls_is_verified_against_the_name(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    made = tls.make(tmp_path / "tls", ["127.0.0.1", "localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(made.cert, made.key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()

    _, url = await serve(handler, context)
    trusting = client(tls=ssl.create_default_context(cafile=str(made.ca_cert)))
    assert (await trusting.post(url, b"{}", {})).status == 204
    with pytest.raises(RequestFailed):  # the system's CAs do not know this one
        await client().post(url, b"{}", {})
    other = tls.make(tmp_path / "other", ["example.org"])
    context2 = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context2.load_cert_chain(other.cert, other.key)
    _, url2 = await serve(handler, context2)
    with pytest.raises(RequestFailed):  # a certificate for another name
        await client(tls=ssl.create_default_context(cafile=str(other.ca_cert))).post(url2, b"{}", {})
