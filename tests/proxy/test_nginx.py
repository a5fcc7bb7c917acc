"""docs/nginx/smsdora.conf through a real nginx in front of a real broker
(issue 11, "Also deliver"; contract section 12: "behind the nginx config the
docs ship, tested through a real nginx"): an API send and a WebSocket phone
that gets its job, SSE events as they happen (no buffering, no gzip) at
both paths the app uses, the client's own address as the broker logs it
(nginx trusted by SMSDORA_TRUSTED_PROXIES; a client's own X-Forwarded-For
dropped), a body over 64 KiB refused by nginx, redirects not built from
`Host`, and /metrics not served through it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import error
from tests.e2e.conftest import Account, logging_to, send_sms
from tests.e2e.smsgate_app import APP_HEADERS, SSE_HEADERS, EventStream, register
from tests.proxy.conftest import Nginx

pytestmark = pytest.mark.timeout(30)

PROMPT_S = 1.0  # an event through nginx arrives within this, or it was buffered
CLIENT = "127.0.0.7"  # the test's clients connect to nginx from this loopback address


@pytest.fixture
async def proxied(nginx: Nginx) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTPS client of nginx, from CLIENT."""
    transport = httpx.AsyncHTTPTransport(verify=nginx.ssl, local_address=CLIENT)
    async with httpx.AsyncClient(base_url=nginx.url, transport=transport, timeout=10) as client:
        yield client


class Requests(logging.Handler):
    """The broker's request log lines (smsdora.app "request")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "request":
            self.records.append(record)


@pytest.fixture
def requests_logged() -> Iterator[Requests]:
    handler = Requests()
    with logging_to(handler, logging.getLogger("smsdora.app")):
        yield handler


# --- the API and the phones' WebSocket --------------------------------------------


async def test_a_send_through_nginx_reaches_a_websocket_phone_through_nginx(
        nginx: Nginx, proxied: httpx.AsyncClient, account: Account) -> None:
    """The upgrade goes through (`Upgrade`/`Connection` passed on, HTTP/1.1
    to the broker), the phone is welcomed, and a send through nginx is
    written to it as it happens."""
    device = await account.make_device()
    async with connect(nginx.ws_url, ssl=nginx.ssl, compression=None, open_timeout=5,
                       additional_headers={"Authorization": f"Bearer {device.token}"}) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "appVersion": "test/1"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        r = await send_sms(proxied, account.key)
        assert r.status_code == 201, r.text
        job = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert job["type"] == "send" and job["id"] == r.json()["data"]["id"]
        await ws.send(json.dumps({"type": "ack", "id": job["id"]}))
        receipt = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert receipt == {"type": "receipt", "id": job["id"], "status": "sending"}
    read = await proxied.get(f"/messages/{job['id']}", headers=account.headers)
    assert read.status_code == 200 and read.json()["data"]["status"] == "sending"


async def test_a_bad_device_token_is_refused_through_nginx(nginx: Nginx) -> None:
    transport = httpx.AsyncHTTPTransport(verify=nginx.ssl)
    async with httpx.AsyncClient(base_url=nginx.url, transport=transport, timeout=10) as client:
        r = await client.get("/devices/ws", headers={
            "Authorization": "Bearer smsdev_00000000_" + "x" * 43, "Connection": "Upgrade",
            "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.status_code == 401
    assert r.json() == error(401, "Invalid device token")


# --- the app's event stream ------------------------------------------------------


@contextlib.asynccontextmanager
async def events(client: httpx.AsyncClient, path: str, token: str) -> AsyncIterator[EventStream]:
    stack = contextlib.AsyncExitStack()
    response = await stack.enter_async_context(client.stream(
        "GET", path, headers={**SSE_HEADERS, "Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(10, read=60)))
    assert response.status_code == 200, await response.aread()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in response.headers  # the app asks for gzip: none
    stream = EventStream(response, stack)
    try:
        yield stream
    finally:
        await stream.close()


@pytest.mark.parametrize("prefix", ["/api/mobile/v1", "/mobile/v1"])
async def test_events_come_through_nginx_as_they_happen(
        proxied: httpx.AsyncClient, account: Account, prefix: str) -> None:
    """Each SSE event the broker writes is at the app within PROMPT_S while
    the stream stays open: nginx buffers none of it (with the default
    `proxy_buffering on` a few dozen bytes wait for a buffer to fill)."""
    app = await register(proxied, account.key)
    async with events(proxied, f"{prefix}/events", app.token) as stream:
        first = [(await stream.next(PROMPT_S * 5)).name for _ in range(2)]
        assert first == ["WebhooksUpdated", "SettingsUpdated"]
        listed = await proxied.get(f"{prefix}/message", headers={
            **APP_HEADERS, "Authorization": f"Bearer {app.token}"})
        assert listed.status_code == 200 and listed.json() == []
        started = time.monotonic()
        assert (await send_sms(proxied, account.key)).status_code == 201
        event = await stream.next(PROMPT_S)
        assert event.name == "MessageEnqueued"
        assert time.monotonic() - started < PROMPT_S
        assert not stream.ended.is_set()


async def test_an_app_behind_nginx_is_given_an_inbound_url_it_reaches(
        nginx: Nginx, proxied: httpx.AsyncClient, account: Account) -> None:
    """GET /webhooks lists the broker's sms:received URL as the app called
    it: https, and nginx's host with its port (X-Forwarded-Host), not the
    broker's own loopback address; a signed POST to it is stored."""
    app = await register(proxied, account.key)
    r = await proxied.get("/api/mobile/v1/webhooks", headers=app.headers)
    assert r.status_code == 200, r.text
    [hook] = r.json()
    assert hook["event"] == "sms:received"
    assert hook["url"] == f"{nginx.url}/api/mobile/v1/inbound/{app.id}"


# --- the client's address --------------------------------------------------------


async def test_the_broker_sees_the_clients_address_not_nginxs(
        proxied: httpx.AsyncClient, account: Account, requests_logged: Requests) -> None:
    """nginx connects to the broker from 127.0.0.1 (trusted); the request's
    log line carries the client's own address, also when the client sent an
    X-Forwarded-For of its own (nginx sets the header, not appends to it)."""
    for headers in ({}, {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}):
        r = await proxied.get("/devices", headers={**account.headers, **headers})
        assert r.status_code == 200, r.text
    clients = [getattr(rec, "client", None) for rec in requests_logged.records
               if getattr(rec, "route", None) != "unmatched"]
    assert clients[-2:] == [CLIENT, CLIENT], clients


# --- limits ----------------------------------------------------------------------


async def test_a_body_over_64_kib_is_refused_by_nginx(
        proxied: httpx.AsyncClient, account: Account, requests_logged: Requests) -> None:
    """413 in the contract's error shape, from nginx: the broker never sees
    the request. 64 KiB exactly goes through (and is the broker's to judge)."""
    over = b"{" + b" " * (64 * 1024 - 1)  # 64 KiB + 1 byte with the closing brace
    r = await proxied.post("/messages/send", content=over + b"}", headers={
        **account.headers, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json() == error(413, "Request body exceeds 64 KiB")
    assert requests_logged.records == []
    at_limit = b'{"recipient": "+16502530000", "message": "x"' + b" " * 64 * 1024
    at_limit = at_limit[:64 * 1024 - 1] + b"}"
    r = await proxied.post("/messages/send", content=at_limit, headers={
        **account.headers, "Content-Type": "application/json"})
    assert r.status_code != 413, r.text
    assert len(requests_logged.records) == 1


async def test_redirects_name_the_site_never_the_host_header(nginx: Nginx) -> None:
    async with httpx.AsyncClient(base_url=nginx.http_url, timeout=10) as client:
        r = await client.get("/devices?x=1", headers={"Host": "evil.example.com"})
    assert r.status_code == 301
    assert r.headers["location"] == "https://sms.example.com/devices?x=1"


async def test_metrics_are_not_served_through_nginx(
        proxied: httpx.AsyncClient, requests_logged: Requests) -> None:
    r = await proxied.get("/metrics")
    assert r.status_code == 404
    assert requests_logged.records == []
    assert (await proxied.get("/health")).status_code == 200
