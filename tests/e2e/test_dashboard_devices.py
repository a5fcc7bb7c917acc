"""The dashboard's devices page over real HTTP (CONTRACT section 11): the
list with presence, its live stream following real phones, "Add a phone"
(a pairing code a real SMS Gateway client registers with, a WebSocket
token a real phone connects with), rename / send rate / deactivate, other
accounts' devices a 404, CSRF."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from broker import keys, store
from broker.settings import Settings
from tests.e2e.conftest import SECRET, Device, PhoneFactory, Server, wait_for
from tests.e2e.smsgate_app import API, APP_HEADERS
from tests.e2e.test_dashboard_accounts import csrf_of, sign_up

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10)


async def signed_up(http: httpx.AsyncClient, db: asyncpg.Connection,
                    email: str = "ana@example.com") -> uuid.UUID:
    assert (await sign_up(http, email)).status_code == 303
    account_id = await db.fetchval("SELECT id FROM accounts WHERE email = $1", email)
    assert isinstance(account_id, uuid.UUID)
    return account_id


async def make_device(db: asyncpg.Connection, account_id: uuid.UUID, name: str = "Phone",
                      send_rate: int = 30) -> Device:
    token, prefix = keys.make_secret(keys.TOKEN_KIND)
    row = await store.insert_device(db, account_id, name, prefix, keys.digest(SECRET, token),
                                    send_rate)
    return Device(id=str(row.id), name=name, token=token)


def row_of(page: str, device_id: str) -> str:
    found = re.search(rf'<tr id="device-{device_id}".*?</tr>', page, re.S)
    assert found, page
    return found.group(0)


def element(page: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', page)
    assert found, page
    return html.unescape(found.group(1))


class Live:
    """The page's event stream, read as live.js would: `html` events."""

    def __init__(self, lines: AsyncIterator[str]) -> None:
        self.lines = lines
        self.last_id: str | None = None

    async def next(self, timeout: float = 5.0) -> str:
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line.startswith("id: "):
                    self.last_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    return "\n".join(data)
        raise AssertionError("the stream ended")

    async def until(self, pattern: str, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if re.search(pattern, event, re.S):
                    return event


@contextlib.asynccontextmanager
async def live(http: httpx.AsyncClient, url: str) -> AsyncIterator[Live]:
    async with http.stream("GET", url, timeout=httpx.Timeout(10, read=30)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("retry:")
        yield Live(lines)


async def test_the_page_lists_devices_with_presence(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account_id = await signed_up(http, db)
    online = await make_device(db, account_id, "Kitchen phone")
    offline = await make_device(db, account_id, "Drawer <phone>", send_rate=0)
    await phone(online, health={"battery": 87, "charging": True, "signal": 3})
    page = await http.get("/dashboard/devices")
    assert page.status_code == 200
    row = row_of(page.text, online.id)
    assert 'data-online="true"' in row and '<span class="status online">online</span>' in row
    assert "Kitchen phone" in row and "87%" in row and "charging" in row and "3/4" in row
    assert "test/1" in row and "WebSocket" in row and "30/min" in row
    row = row_of(page.text, offline.id)
    assert 'data-online="false"' in row and "offline" in row and "never" in row
    assert "Drawer &lt;phone&gt;" in row and "no limit" in row  # escaped
    assert 'data-live="/dashboard/live?view=devices&amp;v=' in page.text
    assert '<tr id="device-none" hidden>' in page.text


async def test_the_live_stream_follows_phones_coming_and_going(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account_id = await signed_up(http, db)
    device = await make_device(db, account_id, "Kitchen phone")
    page = await http.get("/dashboard/devices")
    url = html.unescape(re.search(r'data-live="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    async with live(http, url) as stream:
        await asyncio.sleep(0.2)  # its first look: the page's own rows, so nothing sent
        p = await phone(device)
        # The first event is the change: nothing was re-sent for the unchanged page.
        event = await stream.next()
        assert event.startswith(f'<tr id="device-{device.id}"'), event
        assert 'data-online="true"' in event and "online" in event
        assert 'data-into="devices-body"' in event
        await stream.until(r'id="device-none" hidden')
        # A phone registered meanwhile (here by the API) appears, for its tbody.
        r = await http.post("/devices", json={"name": "New phone"}, headers={
            "x-api-key": await api_key(db, account_id)})
        assert r.status_code == 201
        new_id = r.json()["data"]["id"]
        event = await stream.until(f'id="device-{new_id}"')
        assert 'data-into="devices-body"' in event and "offline" in event
        await p.close()
        event = await stream.until(rf'id="device-{device.id}"[^>]*data-online="false"')
        assert "offline" in event
    # Resuming from the last id sent: nothing changed, nothing is sent at once.
    assert stream.last_id
    async with http.stream("GET", "/dashboard/live?view=devices",
                           headers={"last-event-id": stream.last_id}) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("retry:")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                while not await anext(lines):
                    pass  # the blank line ending `retry:`


async def api_key(db: asyncpg.Connection, account_id: uuid.UUID) -> str:
    key, prefix = keys.make_secret(keys.KEY_KIND)
    await store.insert_key(db, account_id, "k", prefix, keys.digest(SECRET, key),
                           ["devices:write", "devices:read"], None, None)
    return key


async def test_a_pairing_code_registers_an_sms_gateway_app_by_code(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await signed_up(http, db)
    new = await http.get("/dashboard/devices/new")
    assert new.status_code == 200 and 'id="pairing-code"' not in new.text
    r = await http.post("/dashboard/devices/code", data={"csrf": csrf_of(new.text)})
    assert r.status_code == 200
    code = element(r.text, "pairing-code")
    assert re.fullmatch(r"[23456789abcdefghjkmnpqrstuvwxyz]{6}", code)
    url = element(r.text, "server-url")
    assert url == f"{server.url}/api/mobile/v1"  # the origin this browser reached
    assert re.search(r'<img class="qr" id="server-url-qr" src="data:image/svg\+xml', r.text)
    assert "By code" in r.text and "SSE Only" in r.text and "UTC</time>" in r.text
    # The app, pointed at that URL, signs in "By code".
    async with httpx.AsyncClient(timeout=10) as app:
        reg = await app.post(f"{url}/device", json={"name": "samsung/beyond1ltexx"},
                             headers={**APP_HEADERS, "Authorization": f"Code {code}"})
        assert reg.status_code == 201, reg.text
        again = await app.post(f"{url}/device", json={"name": "x"},
                               headers={**APP_HEADERS, "Authorization": f"Code {code}"})
        assert again.status_code == 401  # single use
    page = await http.get("/dashboard/devices")
    row = row_of(page.text, reg.json()["id"])
    assert "samsung/beyond1ltexx" in row and "SMS Gateway app" in row
    assert API == "/api/mobile/v1"


async def test_a_websocket_token_shown_once_registers_and_connects(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account_id = await signed_up(http, db)
    new = await http.get("/dashboard/devices/new")
    r = await http.post("/dashboard/devices/new", data={
        "csrf": csrf_of(new.text), "name": "Desk phone", "send_rate": "12"})
    assert r.status_code == 201
    token = element(r.text, "device-token")
    assert token.startswith("smsdev_")
    command = element(r.text, "device-sim-command")
    assert f"SMSDORA_DEVICE_TOKEN={token}" in command
    assert f"smsdora device-sim --url {server.url}" in command
    row = await db.fetchrow("SELECT id, name, send_rate, transport FROM devices"
                            " WHERE account_id = $1", account_id)
    assert (row["name"], row["send_rate"], row["transport"]) == ("Desk phone", 12, "websocket")
    p = await phone(Device(id=str(row["id"]), name="Desk phone", token=token))
    assert p.welcome["deviceId"] == str(row["id"])
    page = await http.get("/dashboard/devices")
    assert token not in page.text and 'data-online="true"' in row_of(page.text, str(row["id"]))
    bad = await http.post("/dashboard/devices/new", data={
        "csrf": csrf_of(new.text), "name": "x", "send_rate": "-1"})
    assert bad.status_code == 400 and "send rate" in bad.text


async def test_rename_send_rate_deactivate_and_reactivate(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account_id = await signed_up(http, db)
    device = await make_device(db, account_id, "Kitchen phone")
    p = await phone(device)
    page = await http.get(f"/dashboard/devices/{device.id}")
    assert page.status_code == 200 and 'id="device-name"' in page.text
    assert f'data-live="/dashboard/live?view=devices&amp;device={device.id}&amp;v=' in page.text
    csrf = csrf_of(page.text)
    r = await http.post(f"/dashboard/devices/{device.id}", data={
        "csrf": csrf, "name": "Hall phone", "send_rate": "5"})
    assert r.status_code == 303 and r.headers["location"] == f"/dashboard/devices/{device.id}"
    stored = await db.fetchrow("SELECT name, send_rate, active FROM devices WHERE id = $1",
                               uuid.UUID(device.id))
    assert tuple(stored) == ("Hall phone", 5, True)
    conn = server.broker.presence.get(uuid.UUID(device.id))
    assert conn is not None and conn.name == "Hall phone"  # followed at once
    r = await http.post(f"/dashboard/devices/{device.id}/deactivate", data={"csrf": csrf})
    assert r.status_code == 303
    with pytest.raises(ConnectionClosed):  # dropped, as PATCH /devices/{id} drops it
        while True:
            await p.recv()
    assert not await db.fetchval("SELECT active FROM devices WHERE id = $1", uuid.UUID(device.id))
    page = await http.get(f"/dashboard/devices/{device.id}")
    assert "Reactivate phone" in page.text and "deactivated" in page.text
    await wait_for(lambda: _offline(server, device.id), what="the connection gone")
    r = await http.post(f"/dashboard/devices/{device.id}/reactivate", data={"csrf": csrf})
    assert r.status_code == 303
    assert await db.fetchval("SELECT active FROM devices WHERE id = $1", uuid.UUID(device.id))
    assert "Deactivate phone" in (await http.get(f"/dashboard/devices/{device.id}")).text


async def _offline(server: Server, device_id: str) -> bool:
    return server.broker.presence.get(uuid.UUID(device_id)) is None


async def test_another_accounts_device_is_a_404(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await signed_up(http, db)
    other = await db.fetchval("INSERT INTO accounts (id, email) VALUES ($1, 'bo@example.com')"
                              " RETURNING id", uuid.uuid4())
    theirs = await make_device(db, other, "Bo's phone")
    csrf = csrf_of((await http.get("/dashboard/devices")).text)
    for path in (f"/dashboard/devices/{theirs.id}", "/dashboard/devices/not-a-uuid"):
        r = await http.get(path)
        assert r.status_code == 404 and "Device not found" in r.text
    for path in (f"/dashboard/devices/{theirs.id}", f"/dashboard/devices/{theirs.id}/deactivate"):
        r = await http.post(path, data={"csrf": csrf, "name": "mine", "send_rate": "1"})
        assert r.status_code == 404, path
    stored = await db.fetchrow("SELECT name, send_rate, active FROM devices WHERE id = $1",
                               uuid.UUID(theirs.id))
    assert tuple(stored) == ("Bo's phone", 30, True)
    assert theirs.id not in (await http.get("/dashboard/devices")).text


async def test_csrf_refused(server: Server, http: httpx.AsyncClient,
                            db: asyncpg.Connection) -> None:
    account_id = await signed_up(http, db)
    device = await make_device(db, account_id, "Kitchen phone")
    for path, data in (("/dashboard/devices/code", {}),
                       ("/dashboard/devices/new", {"name": "Evil"}),
                       (f"/dashboard/devices/{device.id}", {"name": "Evil", "send_rate": "1"}),
                       (f"/dashboard/devices/{device.id}/deactivate", {})):
        r = await http.post(path, data={**data, "csrf": "forged"})
        assert r.status_code == 403, path
    assert await db.fetchval("SELECT count(*) FROM pairing_codes") == 0
    assert await db.fetchval("SELECT count(*) FROM devices") == 1
    assert tuple(await db.fetchrow("SELECT name, active FROM devices")) == ("Kitchen phone", True)
    # Without a session: to the login page.
    http.cookies.clear()
    r = await http.get("/dashboard/devices/new")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
