"""A phone that stops reading its socket (contract section 12: limits on
what a stranger can make the broker hold): its frames fill the socket's
buffers until uvicorn pauses the transport; from then a write waits, at
most SEND_TIMEOUT_S, and the phone is let go (1013), while the sends that
chose it still answer. Before that pause a frame is written at once, with
no timer (broker/transports/ws/channel.py): this test holds both halves on
a real uvicorn, with a real socket that reads nothing."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import Account, logging_to, send_sms, wait_for
from tests.hostile.conftest import ServerFactory

pytestmark = pytest.mark.timeout(60)
N = 200  # frames of 1.7 KB: past both sockets' buffers (made small) and uvicorn's 64 KiB


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_phone_that_stops_reading_is_let_go_and_the_sends_still_answer(
        serve_with: ServerFactory, account: Account) -> None:
    srv = await serve_with(inflight_window=0)  # every job goes to the phone, unanswered
    device = await account.make_device(send_rate=0)
    host, port = srv.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window...
    sock.connect((host, int(port)))
    sock.setblocking(False)
    ws = await connect(srv.ws_url, sock=sock, max_queue=1, compression=None,  # ...never read
                       additional_headers={"Authorization": f"Bearer {device.token}"})
    await ws.send('{"type": "hello", "protocol": 1, "appVersion": "test/1"}')
    assert '"welcome"' in await asyncio.wait_for(ws.recv(), 5)

    async def connected() -> bool:
        return srv.broker.presence.get(uuid.UUID(device.id)) is not None
    await wait_for(connected, what="the phone registered")
    conn = srv.broker.presence.get(uuid.UUID(device.id))
    assert conn is not None
    assert conn.channel._writable is not None  # uvicorn's flag found: frames untimed
    # The broker's end of the socket with a small send buffer too (else the
    # kernel takes megabytes first): the phone's window fills the sooner.
    protocol = conn.channel.ws._send.__self__
    protocol.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    records = Records()
    with logging_to(records, logging.getLogger("smsdora.devices")):
        # A few connections: one address may hold only so many (the hostile limits).
        async with httpx.AsyncClient(base_url=srv.url, timeout=30,
                                     limits=httpx.Limits(max_connections=8)) as client:
            sent = await asyncio.gather(*(send_sms(client, account.key, message="x" * 1600)
                                          for _ in range(N)))
        assert [r.status_code for r in sent] == [201] * N

        async def let_go() -> bool:
            return bool(conn.channel.closed)
        await wait_for(let_go, what="the phone let go")
    assert "phone not reading: closing its socket" in records.messages
    ws.transport.abort()

