"""The HTTP edges of an exposed broker (issue 11 items 1, 3, 5, 6, 8a, 10;
contract section 12), each probe replayed against a real server on
loopback with real sockets: request heads that never end or never stop,
connection floods, slow bodies, malformed JSON of every shape and encoding,
redirects built from `Host`, the client address on the request line, and
what /health and /metrics tell a stranger."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from broker.ops import logs
from broker.settings import Settings
from tests.conftest import REPO, error, free_port
from tests.e2e.conftest import SECRET, Account, PhoneFactory, Server, logging_to, wait_for
from tests.e2e.smsgate_app import APP_HEADERS, register
from tests.hostile.conftest import Conn, ServerFactory

pytestmark = pytest.mark.timeout(60)

# The contract's deadlines (10 s, 30 s) scaled down so that each probe takes
# about a second; tests/hostile/measure.py runs the probes at full size.
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


@pytest.fixture
def broker_settings(broker_settings: Settings) -> Settings:
    return broker_settings.with_(header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S)

HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # the probe: never finished


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, message: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == message]


@pytest.fixture
def logged() -> Iterator[Records]:
    handler = Records()
    with logging_to(handler, logging.getLogger("smsdora")):
        yield handler


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def closes_total(reason: str) -> float:
    return counted("smsdora_connections_closed_total", reason=reason)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


# --- item 1: the request head's deadline ------------------------------------------------


async def drip(conn: Conn, first: bytes, every_s: float = 0.1) -> bool:
    """Send `first`, then one header line every `every_s`; True once the
    server closed the connection."""
    if not await conn.write(first):
        return True
    while True:
        if await conn.closed_within(every_s) is not None:
            return True
        if not await conn.write(b"X-Drip: 1\r\n"):
            return True


async def test_heads_that_never_end_are_closed_after_the_deadline_and_logged_once(
        server: Server, http: httpx.AsyncClient, logged: Records) -> None:
    """300 sockets drip a request head, 50 say nothing at all: all closed
    after the header deadline, counted, and logged once for their address;
    a client with a whole request is answered meanwhile."""
    before = closes_total("header_timeout")
    dripping = [await Conn.open(server) for _ in range(300)]
    silent = [await Conn.open(server) for _ in range(50)]
    started = time.monotonic()
    tasks = [asyncio.create_task(drip(c, HEAD, every_s=0.2)) for c in dripping]
    assert (await http.get("/health")).status_code == 200  # served while they drip
    async with asyncio.timeout(HEADER_TIMEOUT_S + 5):
        assert all(await asyncio.gather(*tasks))
        for c in silent:
            assert await c.closed_within(HEADER_TIMEOUT_S + 5) == b""
    took = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.9 <= took < HEADER_TIMEOUT_S + 3, took
    assert closes_total("header_timeout") - before == 350
    lines = logged.lines("request head not complete in time")
    assert [(r.levelname, r.client) for r in lines] == [("WARNING", "127.0.0.1")]  # type: ignore[attr-defined]
    for c in dripping + silent:
        c.close()


async def test_the_log_of_refusals_is_rate_limited_across_addresses(
        server: Server, logged: Records) -> None:
    """Many addresses: at most one line each, and at most the log's own
    budget in all; the line after the budget says how many were left out."""
    conns = [await Conn.open(server, f"127.0.0.{n}") for n in range(2, 42)]
    assert await asyncio.gather(*(c.closed_within(HEADER_TIMEOUT_S + 5) for c in conns)) \
        == [b""] * 40
    lines = logged.lines("request head not complete in time")
    clients = [r.client for r in lines]  # type: ignore[attr-defined]
    assert len(clients) == len(set(clients)) == 20, clients


async def test_a_kept_alive_connection_has_the_deadline_for_each_request(server: Server) -> None:
    conn = await Conn.open(server)
    assert await conn.write(HEAD + b"\r\n")
    status, _, _ = await conn.response()
    assert status == 200
    started = time.monotonic()
    # The next request's head, one line at a time: uvicorn's own keep-alive
    # timer stops at the first byte.
    assert await asyncio.wait_for(drip(conn, HEAD, every_s=0.2), HEADER_TIMEOUT_S + 5)
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2


async def test_a_websocket_handshake_dripped_past_the_deadline_gets_no_101(
        server: Server, account: Account) -> None:
    device = await account.make_device()
    conn = await Conn.open(server)
    head = (b"GET /devices/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
            b"Authorization: Bearer " + device.token.encode() + b"\r\n")
    assert await conn.write(head)
    received = b""
    async with asyncio.timeout(HEADER_TIMEOUT_S + 5):
        for _ in range(int(HEADER_TIMEOUT_S * 10) + 20):
            got = await conn.closed_within(0.1)
            if got is not None:
                received = got
                break
            if not await conn.write(b"X-Drip: 1\r\n"):
                break
        else:
            raise AssertionError("the handshake was still open past the deadline")
    assert await conn.write(b"\r\n") is False or await conn.closed_within(1) is not None
    assert b"101" not in received


# --- item 1: the request head's size ----------------------------------------------------


def assert_431(raw: bytes) -> None:
    status, headers, body = parse_response(raw)
    assert status == 431, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == error(431, "Request header fields too large")


async def test_a_head_over_16_kib_is_431_in_the_error_shape_then_closed(server: Server) -> None:
    before = closes_total("header_too_large")
    conn = await Conn.open(server)
    just_under = HEAD + b"X-Big: " + b"a" * (16 * 1024 - len(HEAD) - 20) + b"\r\n\r\n"
    assert len(just_under) < 16 * 1024
    assert await conn.write(just_under)
    assert (await conn.response())[0] == 200  # served, on a connection kept alive
    assert await conn.write(HEAD + b"X-Big: " + b"a" * 16_400 + b"\r\n\r\n")
    raw = await conn.closed_within(5)
    assert raw is not None, "still open"
    assert_431(raw)
    assert closes_total("header_too_large") - before == 1


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_100_mib_of_header_lines_are_refused_without_filling_memory(
        server: Server) -> None:
    """The issue's probe (the server runs in this process, so its memory is
    this process's): the 431 comes after 16 KiB, what follows is dropped,
    and the connection ends long before 100 MiB."""
    conn = await Conn.open(server)
    answer = asyncio.create_task(conn.closed_within(30))
    line = b"X-Filler: " + b"b" * 1000 + b"\r\n"
    chunk, sent = HEAD + line * 64, 0
    before = rss_bytes()
    while sent < 100 * 2**20 and await conn.write(chunk):
        sent += len(chunk)
        chunk = line * 64
    raw = await answer
    grown = rss_bytes() - before
    assert raw is not None, "still open"
    assert_431(raw)
    assert sent < 100 * 2**20, "all of it taken"
    assert grown < 20 * 2**20, f"memory grew {grown / 2**20:.0f} MiB"


async def test_a_websocket_handshake_with_a_huge_head_is_431(server: Server) -> None:
    conn = await Conn.open(server)
    assert await conn.write(
        b"GET /devices/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16))
        + b"\r\nX-Big: " + b"d" * 20_000 + b"\r\n\r\n")
    raw = await conn.closed_within(5)
    assert raw is not None
    assert_431(raw)


# --- item 1: connection caps ------------------------------------------------------------


async def admitted(conn: Conn) -> bool:
    """The server answers a whole request on it (and keeps it open)."""
    if not await conn.write(HEAD + b"\r\n"):
        return False
    try:
        return (await conn.response(timeout=3))[0] == 200
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


async def test_connections_past_the_per_address_cap_are_closed_at_once(
        serve_with: ServerFactory, logged: Records) -> None:
    srv = await serve_with(max_connections_per_address=20, header_timeout_s=30)
    before = closes_total("over_address")
    held = [await Conn.open(srv) for _ in range(20)]
    assert all([await admitted(c) for c in held])
    extra = await Conn.open(srv)
    started = time.monotonic()
    assert await extra.closed_within(2) == b""
    assert time.monotonic() - started < 0.5
    assert closes_total("over_address") - before == 1
    assert [r.client for r in logged.lines("connection refused")] == ["127.0.0.1"]  # type: ignore[attr-defined]
    # Another address is not refused; a slot given back is taken again.
    assert await admitted(await Conn.open(srv, "127.0.0.2"))
    held.pop().close()

    async def readmitted() -> bool:
        return await admitted(await Conn.open(srv))
    await wait_for(readmitted, what="a connection admitted again after one closed")


async def test_connections_past_the_total_cap_are_closed_at_once_and_phones_count(
        serve_with: ServerFactory, account: Account) -> None:
    from websockets.asyncio.client import connect

    srv = await serve_with(max_connections=12, header_timeout_s=30)
    before = closes_total("over_total")
    device = await account.make_device()
    ws = await connect(srv.ws_url, additional_headers={"Authorization": f"Bearer {device.token}"},
                       compression=None, open_timeout=5)
    held = [await Conn.open(srv, f"127.0.0.{n}") for n in range(2, 13)]  # 11 + the phone
    assert all([await admitted(c) for c in held])
    for source in ("127.0.0.1", "127.0.0.99"):
        assert await (await Conn.open(srv, source)).closed_within(2) == b""
    assert closes_total("over_total") - before == 2
    await ws.close()  # the phone's slot is given back too

    async def readmitted() -> bool:
        return await admitted(await Conn.open(srv))
    await wait_for(readmitted, what="a connection admitted after the phone left")


# --- item 6: a slow body is the client's problem ----------------------------------------


async def body_routes(http: httpx.AsyncClient, account: Account) -> dict[str, tuple[str, bytes]]:
    """Every route that reads a body: (method path, the request head's
    credentials line)."""
    app = await register(http, account.key)
    key = b"X-Api-Key: " + account.key.encode() + b"\r\n"
    bearer = b"Authorization: Bearer " + account.key.encode() + b"\r\n"
    phone = b"Authorization: Bearer " + app.token.encode() + b"\r\n"
    return {"send": ("POST /messages/send", key), "devices": ("POST /devices", key),
            "smsgate register": ("POST /api/mobile/v1/device", bearer),
            "smsgate update": ("PATCH /api/mobile/v1/device", phone),
            "smsgate report": ("PATCH /api/mobile/v1/message", phone),
            "smsgate password": ("PATCH /api/mobile/v1/user/password", phone)}


async def test_a_slow_body_is_408_on_every_route_never_a_database_fault(
        server: Server, http: httpx.AsyncClient, account: Account, logged: Records) -> None:
    for name, (line, credentials) in (await body_routes(http, account)).items():
        conn = await Conn.open(server)
        assert await conn.write(line.encode() + b" HTTP/1.1\r\nHost: x\r\n" + credentials
                                + b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"")
        raw = await conn.closed_within(BODY_TIMEOUT_S + 3)
        assert raw is not None, f"{name}: no answer"
        status, headers, body = parse_response(raw)
        assert (status, json.loads(body)) == (408, error(408, "Request body not received in time")), \
            name
        assert headers["connection"] == "close", name
    assert logged.lines("database unavailable") == []
    statuses = [r.status for r in logged.lines("request")]  # type: ignore[attr-defined]
    assert statuses[-6:] == [408] * 6


async def test_a_body_slower_than_the_request_deadline_but_in_its_own_is_answered(
        serve_with: ServerFactory, account: Account) -> None:
    """The request deadline (here 0.5 s) is for our work; the body has its own."""
    srv = await serve_with(request_timeout_s=0.5, body_timeout_s=5)
    conn = await Conn.open(srv)
    body = json.dumps({"name": "Slow phone"}).encode()
    assert await conn.write(b"POST /devices HTTP/1.1\r\nHost: x\r\nX-Api-Key: "
                            + account.key.encode() + b"\r\nContent-Type: application/json\r\n"
                            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    for i in range(len(body)):
        assert await conn.write(body[i:i + 1])
        await asyncio.sleep(1.2 / len(body))
    status, _, answer = await conn.response()
    assert status == 201, answer


# --- item 5: malformed input is a 400 ---------------------------------------------------

DEEP_ARRAY = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECT = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


def malformed(valid: Any) -> dict[str, bytes]:
    """Every way we know to break a JSON body, from a valid one."""
    text = json.dumps(valid)
    out = {
        "nested 10,000 deep (arrays)": DEEP_ARRAY, "nested 10,000 deep (objects)": DEEP_OBJECT,
        "UTF-16 with a BOM": text.encode("utf-16"), "UTF-16-LE": text.encode("utf-16-le"),
        "UTF-32": text.encode("utf-32"), "UTF-8 with a BOM": b"\xef\xbb\xbf" + text.encode(),
        "Latin-1 bytes": text.replace('"', '"\xe9', 1).encode("latin-1"),
        "invalid UTF-8": text.encode().replace(b'"', b'"\xff\xfe', 1),
        "an overlong encoding": text.encode().replace(b'"', b'"\xc0\xaf', 1),
        "an encoded surrogate": text.encode().replace(b'"', b'"\xed\xa0\x80', 1),
        "NUL bytes": b"\x00" * 64, "a NUL after the JSON": text.encode() + b"\x00",
        "a NUL inside": text.encode().replace(b":", b":\x00", 1), "empty": b"",
        "an escaped lone surrogate": text.replace('"', '"\\ud800', 1).encode(),
    }
    item, wrap = (valid[0], True) if isinstance(valid, list) else (valid, False)
    for field, value in item.items():
        for name, raw in (("deep array", DEEP_ARRAY), ("deep object", DEEP_OBJECT)):
            body = text.encode().replace(json.dumps(value).encode(), raw, 1) \
                if json.dumps(value) in text else None
            if body is not None:
                out[f"{field}: {name}"] = body
        if isinstance(value, str):
            changed = {**item, field: value + "\x00"}
            out[f"{field}: an escaped NUL"] = json.dumps([changed] if wrap else changed).encode()
    extra = {**item, "unknown": None}
    out["an unknown field nested 10,000 deep"] = json.dumps(
        [extra] if wrap else extra).encode().replace(b"null", DEEP_OBJECT)
    return out


async def test_malformed_bodies_are_400_on_every_route(
        server: Server, http: httpx.AsyncClient, account: Account, logged: Records) -> None:
    app = await register(http, account.key)
    mid = "0b7e3c5e-8a5f-4b4e-9d55-2d5d1e6f0a11"
    routes: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/messages/send", account.headers,
         {"recipient": "+16502530000", "message": "hello", "ttl": 60}),
        ("POST", "/devices", account.headers, {"name": "Phone", "sendRate": 30}),
        ("POST", "/api/mobile/v1/device", {**APP_HEADERS, "Authorization": f"Bearer {account.key}"},
         {"name": "Pixel", "pushToken": "t"}),
        ("PATCH", "/api/mobile/v1/device", app.headers, {"id": app.id, "pushToken": "t"}),
        ("PATCH", "/api/mobile/v1/message", app.headers,
         [{"id": mid, "state": "Failed", "states": {"Pending": "2026-01-01T00:00:00.000+07:00"},
           "recipients": [{"phoneNumber": "+16502530000", "state": "Failed", "error": "x"}]}]),
        ("PATCH", "/api/mobile/v1/user/password", app.headers,
         {"currentPassword": "a" * 12, "newPassword": "b" * 12}),
    ]
    wrong = []
    for method, path, headers, valid in routes:
        for name, body in malformed(valid).items():
            r = await http.request(method, path, content=body,
                                   headers={**headers, "Content-Type": "application/json"})
            if r.status_code != 400 or set(r.json()) != {"statusCode", "message", "error"}:
                wrong.append(f"{method} {path} {name}: {r.status_code} {r.text[:100]}")
    assert not wrong, "\n".join(wrong)
    assert logged.lines("unexpected error") == []


# --- item 8a: no redirect built from Host -----------------------------------------------


async def test_no_redirect_is_built_from_host(server: Server, account: Account) -> None:
    for path in ("/devices/", "/messages/", "/health/", "/api/mobile/v1", "/mobile/v1",
                 "/api/mobile/v1/device/", "//evil.example.com/", "/docs/"):
        conn = await Conn.open(server)
        assert await conn.write(f"GET {path} HTTP/1.1\r\nHost: evil.example.com\r\n"
                                f"X-Api-Key: {account.key}\r\n\r\n".encode())
        status, headers, body = await conn.response()
        conn.close()
        assert "location" not in headers, (path, headers)
        assert (status, json.loads(body)) == (404, error(404, f"Cannot GET {path}")), path


# --- item 3 (the log line): the client address ------------------------------------------


async def test_the_request_line_carries_the_peer_and_ignores_forwarded_headers_from_strangers(
        http: httpx.AsyncClient, logged: Records) -> None:
    await http.get("/health", headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "198.51.100.7"})
    assert [r.client for r in logged.lines("request")] == ["127.0.0.1"]  # type: ignore[attr-defined]


async def test_behind_a_trusted_proxy_the_request_line_carries_the_forwarded_client(
        serve_with: ServerFactory, logged: Records) -> None:
    srv = await serve_with(trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),
                                            ipaddress.ip_network("10.0.0.0/8")))
    async with httpx.AsyncClient(base_url=srv.url) as c:
        # Spoofed by the client on the left, appended by two proxies of ours.
        await c.get("/health", headers={"X-Forwarded-For": "192.0.2.1, 203.0.113.9, 10.1.2.3"})
        await c.get("/health", headers={"X-Real-IP": "198.51.100.7"})
        await c.get("/health", headers={"X-Forwarded-For": "not an address"})
        await c.get("/health")
    assert [r.client for r in logged.lines("request")] == [  # type: ignore[attr-defined]
        "203.0.113.9", "198.51.100.7", "127.0.0.1", "127.0.0.1"]


async def test_every_line_logged_within_a_request_or_a_phone_socket_carries_the_client(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    """Not only the request line: a line the phone's socket logs (`device
    connected`) says whose it was too; a line logged outside any request
    (here, by the test itself) carries none."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())  # formats at emit, in the caller's context
    with logging_to(handler, logging.getLogger("smsdora")):
        p = await phone(await account.make_device("Logged phone"))
        await p.close()
        logging.getLogger("smsdora.test").info("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    connected = [line for line in lines if line["msg"] == "device connected"]
    assert connected and all(line.get("client") == "127.0.0.1" for line in connected), lines
    assert "client" not in next(line for line in lines if line["msg"] == "outside")


# --- item 10: what /health and /metrics tell a stranger ---------------------------------

METRICS_TOKEN = "metrics-token-0123456789"


async def test_public_health_says_status_and_database_only(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    await phone(await account.make_device())
    r = await http.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "database": "ok"})


async def test_metrics_on_the_main_port_only_with_the_token(
        http: httpx.AsyncClient, serve_with: ServerFactory, account: Account,
        phone: PhoneFactory) -> None:
    r = await http.get("/metrics")
    assert (r.status_code, r.json()) == (404, error(404, "Cannot GET /metrics"))
    srv = await serve_with(metrics_token=METRICS_TOKEN)
    async with httpx.AsyncClient(base_url=srv.url) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"},
                        {"Authorization": f"Basic {METRICS_TOKEN}"}):
            r = await c.get("/metrics", headers=headers)
            assert (r.status_code, r.json()) == (401, error(401, "Invalid metrics token")), headers
        ok = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        r = await c.get("/metrics", headers=ok)
        assert r.status_code == 200 and "smsdora_sends_total" in r.text
        health = (await c.get("/health", headers=ok)).json()
        assert set(health) == {"status", "database", "node", "devicesOnline", "uptimeSeconds"}
        assert (await c.get("/health")).json() == {"status": "ok", "database": "ok"}


def serve_process(database_url: str, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    full = {**os.environ, "DATABASE_URL": database_url, "SMSDORA_SECRET": SECRET.decode(),
            "SMSDORA_HOME": str(tmp_path / "home"), "SMSDORA_PORT": str(port),
            "SMSDORA_LOG_LEVEL": "INFO", "SMSDORA_NODE": "hostile-test", **env}
    proc = subprocess.Popen([sys.executable, "-m", "broker", "serve"], cwd=REPO, env=full,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    return proc, port


async def answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as c:
            return (await c.get(url)).status_code == 200
    except httpx.TransportError:
        return False


def refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_serve_runs_the_metrics_listener_and_stops_it_with_itself(
        database_url: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    metrics_port = free_port()
    proc, port = serve_process(database_url, tmp_path,
                               SMSDORA_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    try:
        await wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), timeout=20,
                       what="serve up")
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert r.status_code == 200 and "smsdora_http_request_seconds" in r.text
            detail = (await c.get(f"http://127.0.0.1:{metrics_port}/health")).json()
            assert detail["node"] == "hostile-test" and detail["devicesOnline"] == 0
            assert (await c.get(f"http://127.0.0.1:{port}/metrics")).status_code == 404
            assert (await c.get(f"http://127.0.0.1:{port}/health")).json() == {
                "status": "ok", "database": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        assert refuses(metrics_port) and refuses(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_serve_with_the_metrics_port_taken_still_serves_and_says_so(
        database_url: str, db: asyncpg.Connection, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc, port = serve_process(database_url, tmp_path, SMSDORA_METRICS_ADDR=f"127.0.0.1:{busy}")
        try:
            await wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), timeout=20,
                           what="serve up")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
    assert code == 0
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()
             if line.startswith("{")]
    assert [(x["level"], x["address"]) for x in lines
            if x["msg"] == "metrics listener not started"] == [("error", f"127.0.0.1:{busy}")]
