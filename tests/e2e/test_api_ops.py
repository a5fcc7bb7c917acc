"""Operations and the edges of the HTTP API end to end (contract section 3):
GET /health, GET /metrics, unknown routes and methods, unexpected faults,
and the request id every response carries."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.ops import logs
from broker.settings import Settings
from tests.conftest import error
from tests.e2e.conftest import Account, PhoneFactory, Server, logging_to, send_sms, wait_for

pytestmark = pytest.mark.timeout(20)

# /metrics and the detailed /health on the main port (contract section 12).
METRICS_TOKEN = "e2e-metrics-token"
METRICS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.fixture
def broker_settings(broker_settings: Settings) -> Settings:
    return broker_settings.with_(metrics_token=METRICS_TOKEN)




# --- GET /health ------------------------------------------------------------------------


async def test_health_needs_no_key_and_counts_connected_phones(
        http: httpx.AsyncClient, server: Server, account: Account,
        phone: PhoneFactory) -> None:
    r = await http.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "database": "ok"})
    body = (await http.get("/health", headers=METRICS)).json()  # the detailed form
    assert body == {"status": "ok", "database": "ok", "node": server.broker.settings.node,
                    "devicesOnline": 0, "uptimeSeconds": body["uptimeSeconds"]}
    assert isinstance(body["node"], str) and body["node"]
    assert isinstance(body["uptimeSeconds"], int) and body["uptimeSeconds"] >= 0

    p = await phone(await account.make_device())
    assert (await http.get("/health", headers=METRICS)).json()["devicesOnline"] == 1
    second = await phone(await account.make_device("Second"))
    assert (await http.get("/health", headers=METRICS)).json()["devicesOnline"] == 2
    await p.close()
    await second.close()

    async def none_online() -> bool:
        return (await http.get("/health", headers=METRICS)).json()["devicesOnline"] == 0
    await wait_for(none_online, what="devicesOnline back to 0 after the phones left")


async def test_health_names_no_account_device_or_number(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device("Zanzibar Handset")
    await phone(device)
    sent = await send_sms(http, account.key, recipient="+447911123456")
    assert sent.status_code == 201
    text = (await http.get("/health")).text
    for secret in (account.email, "example.com", "Zanzibar", device.id, str(account.id),
                   "+447911123456", "447911123456", sent.json()["data"]["id"]):
        assert secret not in text, secret


# --- GET /metrics -----------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(snapshot: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_are_prometheus_text_and_move_with_a_send(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    r = await http.get("/metrics", headers=METRICS)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in ("smsdora_sends_total", "smsdora_status_transitions_total",
                 "smsdora_devices_connected", "smsdora_http_request_seconds",
                 "smsdora_dispatch_seconds"):
        assert f"# TYPE {name}" in r.text or f"# TYPE {name.removesuffix('_total')}" in r.text, \
            name
    before = samples(r.text)
    assert value(before, "smsdora_devices_connected") == 1

    assert (await send_sms(http, account.key)).status_code == 201
    mid = (await p.expect("send"))["id"]
    assert (await p.ask({"type": "ack", "id": mid}))["type"] == "receipt"
    after = samples((await http.get("/metrics", headers=METRICS)).text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)
    assert moved("smsdora_sends_total", result="dispatching") == 1
    assert moved("smsdora_status_transitions_total", status="queued") == 1
    assert moved("smsdora_status_transitions_total", status="dispatching") == 1
    assert moved("smsdora_status_transitions_total", status="sending") == 1
    assert moved("smsdora_dispatch_seconds_count") == 1
    assert moved("smsdora_http_request_seconds_count", method="POST", route="send_message",
                 status="201") == 1

    # A refused send counts under its own result.
    await p.close()

    async def gone() -> bool:
        return value(samples((await http.get("/metrics", headers=METRICS)).text),
                     "smsdora_devices_connected") == 0
    await wait_for(gone, what="smsdora_devices_connected back to 0")
    assert (await send_sms(http, account.key)).status_code == 400
    last = samples((await http.get("/metrics", headers=METRICS)).text)
    assert value(last, "smsdora_sends_total", result="no_device") - \
        value(before, "smsdora_sends_total", result="no_device") == 1


# --- 404 and 405 ------------------------------------------------------------------------


async def test_unknown_route_is_404_cannot_method_path(http: httpx.AsyncClient,
                                                       account: Account) -> None:
    for method, path in [("GET", "/nope"), ("POST", "/nope/deeper"),
                         ("GET", "/messages/abc/history"), ("DELETE", "/nowhere/")]:
        for headers in (account.headers, {}):  # with or without a key
            r = await http.request(method, path, headers=headers)
            assert (r.status_code, r.json()) == (404, error(404, f"Cannot {method} {path}")), \
                (method, path)


async def test_wrong_method_is_405_in_the_error_shape(http: httpx.AsyncClient,
                                                      account: Account) -> None:
    for method, path in [("DELETE", "/devices"), ("PUT", "/messages/send"),
                         ("POST", "/health"), ("DELETE", "/messages/x"), ("PATCH", "/messages")]:
        r = await http.request(method, path, headers=account.headers)
        assert (r.status_code, r.json()) == (405, error(405, "Method Not Allowed")), \
            (method, path)
        assert r.headers["allow"], (method, path)


@pytest.mark.parametrize("request_bytes", [
    b"GET /health HTTP/1.1\r\nHost: x\r\ncontent-length: {f{Y\r\n\r\n",  # found by schemathesis
    b"GET /health HTTP/1.1\r\nHo st: x\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
])
async def test_a_request_that_cannot_be_parsed_is_400_in_the_error_shape(
        server: Server, request_bytes: bytes) -> None:
    """uvicorn answers these itself, before any route; in plain text it would
    break "every error is JSON" (contract section 3)."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request_bytes)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # the server closes after it
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    assert "content-type: application/json" in [h.lower() for h in lines[1:]]
    assert json.loads(body) == error(400, "Invalid HTTP request received.")


async def test_get_on_messages_send_is_405_not_a_message_lookup(
        http: httpx.AsyncClient, account: Account) -> None:
    """/messages/send only takes POST; it is not the id of a message."""
    r = await http.get("/messages/send", headers=account.headers)
    assert (r.status_code, r.json()) == (405, error(405, "Method Not Allowed"))
    assert r.headers["allow"] == "POST"


async def test_405_allow_header_lists_every_method_of_the_path(http: httpx.AsyncClient,
                                                                account: Account) -> None:
    """RFC 9110 section 15.5.6: a 405 carries Allow with the resource's
    supported methods; /devices has both GET and POST."""
    r = await http.delete("/devices", headers=account.headers)
    assert r.status_code == 405
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed, r.headers["allow"]


# --- unexpected faults ------------------------------------------------------------------


class _RequestIds(logging.Handler):
    """Remembers, for each record, the request id current when it was logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), logs.request_id.get()))


@pytest.fixture
def request_ids() -> Iterator[_RequestIds]:
    handler = _RequestIds()
    with logging_to(handler, logging.getLogger("smsdora")):
        yield handler


async def corrupt_device_health(db: asyncpg.Connection, account: Account) -> None:
    """A stored health the broker cannot read: GET /devices then faults."""
    device = await account.make_device()
    await db.execute("UPDATE devices SET health = '{\"battery\": \"full\"}' WHERE id = $1::uuid",
                     device.id)


async def test_unexpected_fault_is_500_in_the_error_shape(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection) -> None:
    await corrupt_device_health(db, account)
    r = await http.get("/devices", headers=account.headers)
    assert (r.status_code, r.json()) == (500, error(500, "Internal server error"))
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text


async def test_unexpected_fault_answer_carries_the_request_id(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection) -> None:
    await corrupt_device_health(db, account)
    r = await http.get("/devices", headers={**account.headers, "X-Request-Id": "trace-500"})
    assert r.status_code == 500
    assert r.headers.get("x-request-id") == "trace-500", r.headers


async def test_unexpected_fault_is_logged_with_its_request_id(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        request_ids: _RequestIds) -> None:
    """"An unexpected fault is a 500 in this same shape, logged with a request id"."""
    await corrupt_device_health(db, account)
    r = await http.get("/devices", headers={**account.headers, "X-Request-Id": "trace-500"})
    assert r.status_code == 500
    faults = [rid for msg, rid in request_ids.seen if msg == "unexpected error"]
    assert faults == ["trace-500"], request_ids.seen


# --- request ids ------------------------------------------------------------------------


async def test_every_response_carries_a_request_id(http: httpx.AsyncClient, account: Account,
                                                    phone: PhoneFactory) -> None:
    await phone(await account.make_device())
    limited = await account.make_key(["messages:send"], rate_limit=1)
    reader = await account.make_key(["messages:read"])
    responses = {
        "201": await send_sms(http, account.key, headers={"Idempotency-Key": "i"}),
        "400": await send_sms(http, account.key, recipient="nope"),
        "401": await send_sms(http, "smsgw_nope"),
        "403 scope": await send_sms(http, reader),
        "403 rate": [await send_sms(http, limited) for _ in range(2)][-1],
        "404": await http.get("/nope"),
        "405": await http.delete("/devices", headers=account.headers),
        "409": await send_sms(http, account.key, message="other", headers={"Idempotency-Key": "i"}),
        "413": await http.post("/messages/send", content=b" " * (64 * 1024 + 1),
                               headers=account.headers),
        "200 read": await http.get("/messages", headers=account.headers),
        "health": await http.get("/health"),
        "metrics": await http.get("/metrics", headers=METRICS),
    }
    assert [(k, r.status_code) for k, r in responses.items()] == [
        ("201", 201), ("400", 400), ("401", 401), ("403 scope", 403), ("403 rate", 403),
        ("404", 404), ("405", 405), ("409", 409), ("413", 413), ("200 read", 200),
        ("health", 200), ("metrics", 200)]
    ids = {k: r.headers.get("x-request-id") for k, r in responses.items()}
    assert all(ids.values()), ids
    assert len(set(ids.values())) == len(ids), "request ids must differ per request"


async def test_a_given_request_id_is_echoed(http: httpx.AsyncClient, account: Account) -> None:
    for path, headers in [("/health", {}), ("/nope", {}), ("/messages", account.headers),
                          ("/messages", {})]:
        r = await http.get(path, headers={**headers, "X-Request-Id": "client-trace-7"})
        assert r.headers["x-request-id"] == "client-trace-7", path


async def test_an_unusable_request_id_is_replaced(http: httpx.AsyncClient) -> None:
    r = await http.get("/health", headers={"X-Request-Id": "x" * 65})
    assert r.headers["x-request-id"] not in ("", "x" * 65)
