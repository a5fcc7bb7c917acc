"""Before `hello`, the same limits as after (issue 11 item 7; contract
section 12: "frame limits before `hello` as after it"), replayed against a
real uvicorn on loopback with real `websockets` phones:

- a flood of frames before `hello` meets the frame budget of the session
  (`SMSDORA_FRAME_RATE`/`SMSDORA_FRAME_BURST`) from its first frame: it is
  throttled, then closed 1008, as a flood after `welcome` is (20,000 frames
  were each answered with an `error` frame before);
- one pending handshake per device token: a newer socket that has not said
  `hello` yet replaces the older one (close 4000, as a newer connection
  replaces a connected phone), so 1,000 hello-less sockets on one token
  leave one open (all 1,000 stayed open before), and a phone that
  reconnects while its dead socket still waits for its `hello` gets in at
  once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from broker.settings import Settings
from tests.e2e import conftest as e2e
from tests.e2e.conftest import (
    SECRET,
    Account,
    Device,
    PhoneFactory,
    Server,
    send_sms,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.timeout(60)

FRAME_RATE = 50.0
FRAME_BURST = 20
SLOW_RATE = 10.0  # refills FRAME_BURST in 2 s
HELLO_TIMEOUT_S = 5
FLOOD = 20_000  # the probe
SOCKETS = 1_000  # the probe
HELLO = json.dumps({"type": "hello", "protocol": 1, "appVersion": "test/1"})
PING = '{"type": "ping"}'

# The e2e fixtures (a real uvicorn on loopback, accounts, phones), by name.
server, http, account, make_account, phone = (
    e2e.server, e2e.http, e2e.account, e2e.make_account, e2e.phone)


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20,
                    hello_timeout_s=HELLO_TIMEOUT_S, last_seen_flush_s=0.2, pool_min=1,
                    pool_max=10, frame_rate=FRAME_RATE, frame_burst=FRAME_BURST)


async def open_socket(server: Server, device: Device) -> ClientConnection:
    return await connect(server.ws_url, additional_headers={
        "Authorization": f"Bearer {device.token}"}, compression=None, open_timeout=10)


async def flood(ws: ClientConnection, frame: str | bytes, count: int) -> tuple[int, float]:
    """Write `count` frames as fast as the socket takes them while reading
    every answer; (answers, seconds) once the broker closes the socket."""
    answers = 0

    async def write() -> None:
        try:
            for _ in range(count):
                await ws.send(frame)
        except ConnectionClosed:
            pass

    async def read() -> None:
        nonlocal answers
        try:
            while True:
                await ws.recv()
                answers += 1
        except ConnectionClosed:
            pass

    started = time.monotonic()
    writer = asyncio.get_running_loop().create_task(write())
    try:
        await asyncio.wait_for(read(), HELLO_TIMEOUT_S + 10)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    return answers, time.monotonic() - started


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> int | None:
    """Wait for the broker to close the socket; its close code."""
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


# --- the frame budget from the first frame ---------------------------------------


@pytest.mark.parametrize("frame", [
    '{"type": "ping"}',  # a well-formed frame before hello: hello_first
    "{",  # malformed: bad_frame
    b"\x00" * 16,  # binary: binary_frame
], ids=["ping", "malformed", "binary"])
async def test_a_flood_before_hello_is_throttled_then_closed_1008(
        server: Server, account: Account, frame: str | bytes) -> None:
    """The issue's probe: 20,000 frames before `hello`. The first
    FRAME_BURST are answered at once, the next FRAME_BURST at the frame
    rate, and the one after closes the socket 1008 "too many frames" long
    before the hello deadline, as a flood after `welcome` is closed."""
    ws = await open_socket(server, await account.make_device())
    answers, took_s = await flood(ws, frame, FLOOD)
    assert ws.close_code == 1008 and ws.close_reason == "too many frames", (
        ws.close_code, ws.close_reason, answers)
    assert answers <= 2 * FRAME_BURST + 1, answers
    assert took_s < HELLO_TIMEOUT_S, took_s  # the flood closed it, not the deadline


@pytest.fixture
async def slow_refill_server(db: asyncpg.Connection, database_url: str,
                             broker_settings: Settings) -> AsyncIterator[Server]:
    """A frame rate low enough that what refills while `welcome` is made
    (a database read; long on a loaded machine) stays below the burst."""
    srv = await start_server(broker_settings.with_(frame_rate=SLOW_RATE), database_url)
    try:
        yield srv
    finally:
        await stop_server(srv)


async def test_frames_before_hello_count_against_the_sessions_budget(
        slow_refill_server: Server, account: Account) -> None:
    """One bucket from the first frame to the last: a phone that spent its
    burst before `hello` gets no fresh one with `welcome`. FRAME_BURST - 1
    frames, `hello`, then 2 * FRAME_BURST more, all at once: with a fresh
    bucket at `welcome` the last FRAME_BURST would only be throttled (a
    flood is more than FRAME_BURST throttled in a row); with the one bucket,
    nearly empty at `welcome`, they are a flood."""
    ws = await open_socket(slow_refill_server, await account.make_device())
    for frame in [PING] * (FRAME_BURST - 1) + [HELLO] + [PING] * (2 * FRAME_BURST):
        await ws.send(frame)
    kinds: list[str] = []
    with pytest.raises(ConnectionClosed):
        while True:
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["type"])
    assert kinds[:FRAME_BURST] == ["error"] * (FRAME_BURST - 1) + ["welcome"], kinds
    assert set(kinds[FRAME_BURST:]) <= {"pong"}
    assert ws.close_code == 1008 and ws.close_reason == "too many frames", kinds


async def test_a_calm_phone_that_says_something_before_hello_still_gets_in(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    """Below the budget nothing changes: every frame is answered, then
    `hello` gets `welcome` and jobs flow."""
    device = await account.make_device()
    p = await phone(device, hello=False)
    for _ in range(FRAME_BURST // 2):
        assert (await p.ask({"type": "ping"}))["code"] == "hello_first"
    await p.send(HELLO)
    await p.expect("welcome")
    assert (await send_sms(http, account.key)).status_code == 201
    await p.expect("send")


# --- one pending handshake per token ---------------------------------------------


async def test_a_second_hello_less_socket_on_a_token_replaces_the_first(
        server: Server, account: Account) -> None:
    """The newest pending socket of a token is the one kept: the older one
    is closed 4000 (replaced) at once, and the newer one's `hello` gets in."""
    device = await account.make_device()
    first = await open_socket(server, device)
    second = await open_socket(server, device)
    try:
        assert await closed_with(first) == 4000
        await second.send(HELLO)
        assert json.loads(await asyncio.wait_for(second.recv(), 5))["type"] == "welcome"
    finally:
        await second.close()


async def test_a_phone_that_reconnects_fast_gets_in_at_once(
        server: Server, account: Account) -> None:
    """A phone whose first socket died before its `hello` (the network went
    away; the broker still waits for that hello) reconnects and is welcomed
    at once, not after the dead socket's hello deadline."""
    device = await account.make_device()
    dead = await open_socket(server, device)  # never says anything again
    started = time.monotonic()
    again = await open_socket(server, device)
    try:
        await again.send(HELLO)
        assert json.loads(await asyncio.wait_for(again.recv(), 5))["type"] == "welcome"
        assert time.monotonic() - started < 2
        assert await closed_with(dead) == 4000
    finally:
        await again.close()
        await dead.close()


async def test_a_thousand_hello_less_sockets_on_one_token_leave_one_open(
        server: Server, http: httpx.AsyncClient, account: Account) -> None:
    """The issue's probe: 1,000 sockets on one token that never say `hello`.
    Each new one replaces the one before it, so the broker holds one at any
    time, and the owner's phone still connects and gets its jobs."""
    device = await account.make_device()
    sockets: list[ClientConnection] = []
    try:
        for _ in range(SOCKETS):
            sockets.append(await open_socket(server, device))
        codes = await asyncio.gather(*(closed_with(ws, 10) for ws in sockets[:-1]))
        assert set(codes) == {4000}, {c: codes.count(c) for c in set(codes)}
        last = sockets[-1]
        assert last.close_code is None  # still open, waiting for its hello
        await last.send(HELLO)
        assert json.loads(await asyncio.wait_for(last.recv(), 5))["type"] == "welcome"
        assert (await send_sms(http, account.key)).status_code == 201
        assert json.loads(await asyncio.wait_for(last.recv(), 5))["type"] == "send"
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def test_pending_sockets_of_other_tokens_are_left_alone(
        server: Server, account: Account) -> None:
    """One pending handshake per token, not per account or address."""
    one, two = await account.make_device("One"), await account.make_device("Two")
    a, b = await open_socket(server, one), await open_socket(server, two)
    try:
        for ws in (a, b):
            await ws.send(HELLO)
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
    finally:
        await a.close()
        await b.close()
