"""The device socket end to end (contract section 4): authentication before
the upgrade, hello/welcome, every frame type and every malformed frame,
frame size, replacement by a second connection, heartbeats and last-seen.

Real uvicorn, real `websockets` clients, real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broker import keys, store
from broker.settings import Settings
from tests.e2e.conftest import SECRET, Account, Device, PhoneFactory, Server, send_sms, wait_for
from tests.e2e.test_api_ops import METRICS, METRICS_TOKEN

pytestmark = pytest.mark.timeout(30)

HEARTBEAT_S = 7  # not the default 20, so the welcome provably carries the setting


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=HEARTBEAT_S,
                    hello_timeout_s=1, last_seen_flush_s=0.1, pool_min=1, pool_max=10,
                    metrics_token=METRICS_TOKEN)


# --- helpers ------------------------------------------------------------------


async def raw_connect(server: Server, headers: dict[str, str] | None = None) -> ClientConnection:
    return await connect(server.ws_url, additional_headers=headers or {}, compression=None,
                         open_timeout=5)


async def connected_gauge(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics", headers=METRICS)).text
    for line in text.splitlines():
        if line.startswith("smsdora_devices_connected "):
            return float(line.split()[1])
    raise AssertionError("smsdora_devices_connected missing from /metrics")


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> int | None:
    """Read until the broker closes the socket; its close code."""
    async def drain() -> None:
        while True:
            await ws.recv()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(drain(), timeout)
    return ws.close_code


async def devices_by_id(http: httpx.AsyncClient, account: Account) -> dict[str, dict[str, Any]]:
    r = await http.get("/devices", headers=account.headers)
    assert r.status_code == 200, r.text
    return {d["id"]: d for d in r.json()["data"]}


def utc(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert t.utcoffset() == dt.timedelta(0), f"{text} is not UTC"
    return t


# --- authentication before the upgrade -----------------------------------------


async def test_bad_tokens_are_refused_with_401_before_the_upgrade(
        server: Server, http: httpx.AsyncClient, account: Account,
        db: asyncpg.Connection, phone: PhoneFactory) -> None:
    good = await account.make_device("Good")
    gone = await account.make_device("Deactivated")
    assert await store.deactivate_device(db, uuid.UUID(gone.id))
    unknown, _ = keys.make_secret(keys.TOKEN_KIND)
    # A real device's prefix with another secret: found by prefix, refused by hash.
    forged = good.token[: good.token.rindex("_") + 1] + "x" * 43
    api_key_as_token = account.key  # an API key is not a device token
    before = await connected_gauge(http)
    refused: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic " + good.token},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer smsdev_zzzzzzzz_" + "a" * 43},
        {"Authorization": f"Bearer {unknown}"},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": f"Bearer {api_key_as_token}"},
        {"Authorization": f"Bearer {gone.token}"},
    ]
    for headers in refused:
        with pytest.raises(InvalidStatus) as info:
            await raw_connect(server, headers)
        response = info.value.response
        assert response.status_code == 401, headers
        body = json.loads(response.body or b"{}")
        assert body["statusCode"] == 401 and body["error"] == "Unauthorized", body
    # Never accepted: nobody is online and the gauge did not move.
    assert server.broker.presence.online_count() == 0
    assert await connected_gauge(http) == before
    # The gauge is live: the good token opens a socket and moves it.
    await phone(good)
    assert server.broker.presence.online_count() == 1
    await wait_for(lambda: _gauge_is(http, before + 1), what="gauge counts the good phone")


async def _gauge_is(http: httpx.AsyncClient, value: float) -> bool:
    return await connected_gauge(http) == value


async def test_deactivated_device_cannot_reconnect(
        server: Server, account: Account, db: asyncpg.Connection, phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device)
    await p.close()
    await wait_for(lambda: _offline(server, device), what="device offline")
    await store.deactivate_device(db, uuid.UUID(device.id))
    with pytest.raises(InvalidStatus) as info:
        await phone(device)
    assert info.value.response.status_code == 401
    assert server.broker.presence.online_count() == 0


async def _offline(server: Server, device: Device) -> bool:
    return server.broker.presence.get(uuid.UUID(device.id)) is None


async def _online(server: Server, device: Device) -> bool:
    return server.broker.presence.get(uuid.UUID(device.id)) is not None


# --- hello / welcome -------------------------------------------------------------


async def test_welcome_carries_device_id_heartbeat_and_utc_server_time(
        server: Server, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    before = dt.datetime.now(dt.UTC)
    p = await phone(device)
    after = dt.datetime.now(dt.UTC)
    w = p.welcome
    assert set(w) == {"type", "deviceId", "heartbeatSeconds", "serverTime"}
    assert w["deviceId"] == device.id
    assert w["heartbeatSeconds"] == HEARTBEAT_S
    server_time = utc(w["serverTime"])
    slack = dt.timedelta(seconds=1)
    assert before - slack <= server_time <= after + slack
    assert await _online(server, device)


async def test_frames_before_hello_get_hello_first_and_the_socket_stays_open(
        server: Server, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device, hello=False)
    for frame in ({"type": "ping"}, {"type": "ack", "id": str(uuid.uuid4())},
                  {"type": "status", "id": str(uuid.uuid4()), "status": "sent"}):
        err = await p.ask(frame)
        assert err["type"] == "error" and err["code"] == "hello_first", err
        assert err["detail"]
    # Not online before welcome.
    assert await _offline(server, device)
    await p.send({"type": "hello", "protocol": 1, "appVersion": "late/1"})
    welcome = await p.expect("welcome")
    assert welcome["deviceId"] == device.id
    assert await _online(server, device)
    assert await p.ask({"type": "ping"}) == {"type": "pong"}


async def test_no_hello_in_time_closes_1008(server: Server, account: Account,
                                            phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device, hello=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await closed_with(p.ws) == 1008
    assert 0.8 <= loop.time() - started < 4  # hello_timeout_s is 1
    assert await _offline(server, device)


async def test_other_frames_do_not_extend_the_hello_deadline(
        server: Server, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device, hello=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    codes: list[str] = []
    with pytest.raises(ConnectionClosed):
        while loop.time() - started < 5:
            await p.send({"type": "ping"})
            codes.append((await p.recv())["code"])
            await asyncio.sleep(0.1)
    assert p.ws.close_code == 1008
    assert codes and set(codes) == {"hello_first"}
    assert loop.time() - started < 4


async def test_hello_with_another_protocol_gets_bad_protocol_and_close_1002(
        server: Server, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device, hello=False)
    err = await p.ask({"type": "hello", "protocol": 2, "appVersion": "future/9"})
    assert err["type"] == "error" and err["code"] == "bad_protocol", err
    assert await closed_with(p.ws) == 1002
    assert await _offline(server, device)


# --- frame types -----------------------------------------------------------------


async def test_ping_gets_pong_and_health_shows_in_get_devices(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device, health={"battery": 90, "charging": True, "signal": 4})
    info = (await devices_by_id(http, account))[device.id]
    assert info["health"] == {"battery": 90, "charging": True, "signal": 4}
    assert await p.ask({"type": "ping"}) == {"type": "pong"}
    health = {"battery": 41, "charging": False, "signal": 1}
    assert await p.ask({"type": "ping", "health": health}) == {"type": "pong"}
    info = (await devices_by_id(http, account))[device.id]
    assert info["health"] == health
    assert info["online"] is True and info["appVersion"] == "test/1"

    # The latest health reaches PostgreSQL too, and survives the disconnect.
    async def stored() -> bool:
        raw = await db.fetchval("SELECT health::text FROM devices WHERE id = $1",
                                uuid.UUID(device.id))
        return raw is not None and json.loads(raw) == health
    await wait_for(stored, what="health flushed to PostgreSQL")
    await p.close()
    await wait_for(lambda: _offline(server, device), what="device offline")
    info = (await devices_by_id(http, account))[device.id]
    assert info["online"] is False and info["health"] == health


@pytest.mark.parametrize(("frame", "code"), [
    ("this is not json", "bad_json"),
    ('{"type": "ping"', "bad_json"),
    (b"\xff\xfe", "binary_frame"),
    (b'{"type": "ping"}', "binary_frame"),
    ('{"type": "bogus"}', "unknown_type"),
    ('{"type": "pong"}', "unknown_type"),
    ('{"type": "ack"}', "bad_frame"),
    ('{"type": "status", "id": "x"}', "bad_frame"),
    ('{"type": "status", "id": "x", "status": "lost"}', "bad_frame"),
    ('{"type": "ping", "health": {"battery": 101}}', "bad_frame"),
    ('{"id": "x"}', "bad_frame"),
    ("[1, 2]", "bad_frame"),
    ('{"type": "hello", "protocol": 1}', "bad_frame"),  # a second hello
])
async def test_malformed_frame_gets_error_and_the_socket_keeps_working(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        frame: str | bytes, code: str) -> None:
    device = await account.make_device()
    p = await phone(device)
    err = await p.ask(frame)  # type: ignore[arg-type]
    assert err["type"] == "error" and err["code"] == code, err
    assert isinstance(err["detail"], str) and err["detail"]
    # Still open, still this device's socket: pings and jobs keep working.
    assert await p.ask({"type": "ping"}) == {"type": "pong"}
    r = await send_sms(http, account.key)
    assert r.status_code == 201, r.text
    mid = r.json()["data"]["id"]
    assert (await p.expect("send"))["id"] == mid
    assert await p.ask({"type": "ack", "id": mid}) == {"type": "receipt", "id": mid,
                                                      "status": "sending"}


def _padded_ping(size: int) -> str:
    frame = '{"type": "ping", "pad": "%s"}'
    text = frame % ("x" * (size - len(frame % "")))
    assert len(text.encode()) == size
    return text


async def test_frame_of_exactly_64_kib_is_taken(account: Account, phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    assert await p.ask(_padded_ping(64 * 1024)) == {"type": "pong"}


async def test_frame_over_64_kib_closes_1009(server: Server, account: Account,
                                             phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device)
    await p.send(_padded_ping(64 * 1024 + 1))
    assert await closed_with(p.ws) == 1009
    await wait_for(lambda: _offline(server, device), what="device offline after 1009")


# --- replacement, presence, heartbeats, last-seen --------------------------------------


async def test_second_connection_with_the_same_token_replaces_the_first(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    first = await phone(device)
    second = await phone(device)
    assert await closed_with(first.ws) == 4000
    assert server.broker.presence.online_count() == 1
    r = await send_sms(http, account.key)
    assert r.status_code == 201, r.text
    mid = r.json()["data"]["id"]
    assert (await second.expect("send"))["id"] == mid
    assert await second.ask({"type": "ack", "id": mid}) == {"type": "receipt", "id": mid,
                                                           "status": "sending"}
    # The replaced socket's end did not take the device offline.
    assert await _online(server, device)
    assert (await devices_by_id(http, account))[device.id]["online"] is True


async def test_last_seen_is_flushed_in_batches_and_get_devices_shows_presence(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    device = await account.make_device()
    did = uuid.UUID(device.id)
    assert await db.fetchval("SELECT last_seen_at FROM devices WHERE id = $1", did) is None
    info = (await devices_by_id(http, account))[device.id]
    assert info["online"] is False and info["lastSeen"] is None
    p = await phone(device)

    async def db_seen() -> dt.datetime | None:
        return await db.fetchval("SELECT last_seen_at FROM devices WHERE id = $1", did)

    async def seen_set() -> bool:
        return await db_seen() is not None
    await wait_for(seen_set, what="last_seen_at flushed after welcome")
    first = await db_seen()
    assert first is not None
    info = (await devices_by_id(http, account))[device.id]
    assert info["online"] is True
    listed = utc(info["lastSeen"])
    assert abs(listed - first) < dt.timedelta(seconds=2)
    await asyncio.sleep(0.05)  # let the clock move so the next frame's stamp is later
    assert await p.ask({"type": "ping"}) == {"type": "pong"}

    async def moved() -> bool:
        seen = await db_seen()
        return seen is not None and seen > first
    await wait_for(moved, what="last_seen_at moved by a later frame")
    assert (await db.fetchval("SELECT app_version FROM devices WHERE id = $1", did)) == "test/1"
    await p.close()
    await wait_for(lambda: _offline(server, device), what="device offline")
    info = (await devices_by_id(http, account))[device.id]
    assert info["online"] is False
    assert info["lastSeen"] is not None and utc(info["lastSeen"]) >= first


async def test_after_the_only_phone_disconnects_send_answers_400(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device)
    assert (await send_sms(http, account.key)).status_code == 201
    await p.expect("send")
    await p.close()
    await wait_for(lambda: _offline(server, device), what="device offline")
    r = await send_sms(http, account.key)
    assert r.status_code == 400
    assert r.json() == {"statusCode": 400, "message": "No eligible device available",
                        "error": "Bad Request"}


class TestHeartbeat:
    """No pong within heartbeatSeconds ends the socket (section 4, Presence)."""

    @pytest.fixture
    def broker_settings(self, tmp_path: Path) -> Settings:
        return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=1,
                        hello_timeout_s=1, last_seen_flush_s=0.1, pool_min=1, pool_max=10)

    async def test_a_phone_that_stops_answering_pings_goes_offline(
            self, server: Server, account: Account, phone: PhoneFactory) -> None:
        silent_device = await account.make_device("Silent")
        alive_device = await account.make_device("Alive")
        silent = await phone(silent_device)
        alive = await phone(alive_device)
        silent.ws.transport.pause_reading()  # reads nothing, so answers no WebSocket ping
        await wait_for(lambda: _offline(server, silent_device), timeout=6,
                       what="the silent phone dropped after missed heartbeats")
        # The one answering pings is still online and served.
        assert await _online(server, alive_device)
        assert await alive.ask({"type": "ping"}) == {"type": "pong"}
        silent.ws.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(silent.ws.recv(), 5)
