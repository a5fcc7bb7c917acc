"""The hostile suite (issue 11, contract section 12): the probes an attacker
would run against an exposed broker, replayed against a real uvicorn on
loopback (tests/e2e/conftest.py's server, here with the deadlines
shortened) or a real `smsdora serve` process, with real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from broker.settings import Settings
from tests.e2e.conftest import (  # noqa: F401 - fixtures, used by name
    Account,
    Server,
    account,
    broker_settings,
    http,
    make_account,
    phone,
    server,
    start_server,
    stop_server,
)

ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve_with(db: asyncpg.Connection, database_url: str,
                     broker_settings: Settings,  # noqa: F811 - the fixture, imported above
                     ) -> AsyncIterator[ServerFactory]:
    """`await serve_with(max_connections=30)`: one more server (node), with
    the test's `broker_settings` so changed; stopped after the test."""
    started: list[Server] = []

    async def start(**changes: Any) -> Server:
        # Beside the test's `server`: another node, under a name of its own.
        changes.setdefault("node", f"more-{len(started) + 1}")
        srv = await start_server(broker_settings.with_(**changes), database_url)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await stop_server(srv)


class Conn:
    """One raw TCP connection to the server, as an attacker holds it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, srv: Server, source: str | None = None) -> Conn:
        host, port = srv.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(
            host, int(port), local_addr=(source, 0) if source else None, limit=2**20)
        return cls(reader, writer)

    async def write(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def closed_within(self, seconds: float) -> bytes | None:
        """What the server wrote before closing, or None if still open after `seconds`."""
        chunks = []
        try:
            async with asyncio.timeout(seconds):
                while chunk := await self.reader.read(65536):
                    chunks.append(chunk)
        except TimeoutError:
            return None
        except (ConnectionError, OSError):
            pass
        return b"".join(chunks)

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 response with a Content-Length: status, headers, body."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        self.writer.close()
