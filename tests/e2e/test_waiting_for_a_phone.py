"""A send with a `ttl` and no phone of the account connected waits for one
(contract section 3, v2): stored `queued` with no device, the 201 says so,
and it goes to the first eligible phone that connects before its ttl, or
fails as `expired`. Without a ttl the 400 stands (tests/e2e/test_api_send.py)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest

from broker.settings import Settings
from tests.e2e.conftest import (
    SECRET,
    Account,
    PhoneFactory,
    Stored,
    send_sms,
    stored,
    stored_history,
    wait_for,
)
from tests.e2e.smsgate_app import register

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    sweep_s=0.2, last_seen_flush_s=0.2, pool_min=1, pool_max=10)


async def test_with_a_ttl_and_no_phone_it_is_queued_without_a_device(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection) -> None:
    await account.make_device("Offline phone")  # registered, not connected
    r = await send_sms(http, account.key, ttl=60)
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert (data["status"], data["device"]) == ("queued", None)
    assert await stored(db, data["id"]) == Stored("queued", None, None)
    got = (await http.get(f"/messages/{data['id']}", headers=account.headers)).json()["data"]
    assert (got["status"], got["device"]) == ("queued", None)


async def test_the_first_phone_that_connects_gets_it(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    device = await account.make_device("Late phone")
    mids = [(await send_sms(http, account.key, message=f"wait {i}", ttl=60)).json()["data"]["id"]
            for i in range(2)]
    p = await phone(device)
    got = [await p.expect("send"), await p.expect("send")]
    assert [f["id"] for f in got] == mids  # oldest first
    for mid in mids:
        assert await stored(db, mid) == Stored("dispatching", None, device.id)
        await p.send({"type": "ack", "id": mid})
        assert (await p.expect("receipt"))["status"] == "sending"
    assert await stored_history(db, mids[0]) == ["queued", "dispatching", "sending"]


async def test_an_sms_gateway_phone_that_connects_gets_it_too(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection) -> None:
    app = await register(http, account.key)  # registered, no stream open
    mid = (await send_sms(http, account.key, ttl=60)).json()["data"]["id"]
    stream = await app.open_events()
    names = {(await stream.next()).name for _ in range(3)}
    assert "MessageEnqueued" in names, names
    assert [i["id"] for i in await app.list()] == [mid]
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    await app.close_events()


async def test_nobody_connects_before_the_ttl_and_it_expires(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    device = await account.make_device()
    mid = (await send_sms(http, account.key, ttl=1)).json()["data"]["id"]

    async def expired() -> bool:
        return await stored(db, mid) == Stored("failed", "expired", None)
    await wait_for(expired, timeout=5, what="the waiting message failed as expired")
    assert await stored_history(db, mid) == ["queued", "failed"]
    p = await phone(device)
    await p.nothing(0.5)  # never handed to the phone that came too late


async def test_without_a_ttl_it_is_still_400_and_nothing_is_stored(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection) -> None:
    r = await send_sms(http, account.key)
    assert r.status_code == 400 and r.json()["message"] == "No eligible device available"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_waiting_messages_count_against_the_quota(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO plans (name, monthly_messages, max_devices) VALUES"
                     " ('tiny', 1, 10)")
    await db.execute("UPDATE accounts SET plan = 'tiny' WHERE id = $1", account.id)
    assert (await send_sms(http, account.key, ttl=60)).status_code == 201
    r = await send_sms(http, account.key, ttl=60)
    assert r.status_code == 403 and r.json()["message"] == "Monthly message quota exceeded"
