"""Webhooks with the defaults an exposed broker runs with: private
addresses refused (checked again when connecting), and a poll interval far
longer than the tests wait, so what arrives came from a poke after the
commit, not from the sender's poll."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from broker.settings import Settings
from tests.e2e.conftest import SECRET, Account, PhoneFactory, Server, send_sms, wait_for
from tests.e2e.test_webhooks import LIFECYCLE
from tests.e2e.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10,
                    webhook_allow_private=False, webhook_poll_s=60.0,
                    webhook_retries_s=(0.2,) * 7)



async def endpoint_row(db: asyncpg.Connection, account: Account, url: str) -> str:
    """An endpoint written past the API's check (as if its name resolved to
    a public address when it was saved, and to loopback now)."""
    wid = uuid.uuid4()
    await db.execute("INSERT INTO webhooks (id, account_id, url, events, secret)"
                     " VALUES ($1, $2, $3, ARRAY['*'], $4)", wid, account.id, url,
                     "whsec_" + "A" * 32)
    return str(wid)


async def test_loopback_and_private_urls_are_refused_at_save(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    for url in (receiver.url, "http://localhost:1/h", "http://10.0.0.7/h",
                "http://169.254.169.254/latest/meta-data", "http://[::1]:80/h"):
        r = await http.post("/webhooks", headers=account.headers,
                            json={"url": url, "events": ["*"]})
        assert r.status_code == 400, (url, r.text)
        assert "loopback, private or link-local" in r.json()["message"]
    assert await account.db.fetchval("SELECT count(*) FROM webhooks") == 0


async def test_the_address_is_checked_again_when_connecting(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver,
        db: asyncpg.Connection) -> None:
    wid = await endpoint_row(db, account, receiver.url)
    assert server.broker.webhooks is not None
    await server.broker.webhooks.refresh_accounts()
    await send_sms(http, account.key, ttl=60)

    async def refused() -> bool:
        r = await http.get(f"/webhooks/{wid}/deliveries",
                           headers={"x-api-key": await webhooks_key(account)})
        items = r.json()["data"]
        return bool(items) and "address webhooks may not use" in (items[-1]["error"] or "")

    await wait_for(refused, what="a refused attempt")
    assert receiver.requests == [], "nothing reached the loopback receiver"


_KEYS: dict[uuid.UUID, str] = {}


async def webhooks_key(account: Account) -> str:
    if account.id not in _KEYS:
        _KEYS[account.id] = await account.make_key(["webhooks:write"])
    return _KEYS[account.id]


async def test_events_go_out_right_after_the_commit_not_at_the_next_poll(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver, db: asyncpg.Connection) -> None:
    # The receiver is on loopback: allowed for this test by going past the
    # guard (the poke is what is under test here, not the guard).
    assert server.broker.webhooks is not None
    server.broker.webhooks.client.allow_private = True
    await endpoint_row(db, account, receiver.url)
    receiver.secrets.append("whsec_" + "A" * 32)
    await server.broker.webhooks.refresh_accounts()
    await asyncio.sleep(0.1)  # the sender is now in its 60 s wait
    # A send's events: poked by the send path.
    device = await account.make_device("Pixel")
    p = await phone(device)
    mid = (await send_sms(http, account.key)).json()["data"]["id"]
    await receiver.wait(lambda: receiver.statuses(mid) == LIFECYCLE[:2], timeout=3)
    await asyncio.sleep(0.3)  # the sender back in its wait
    # A report's: poked by the report writer.
    assert (await p.expect("send"))["id"] == mid
    assert (await p.ask({"type": "ack", "id": mid}))["status"] == "sending"
    await receiver.wait(lambda: receiver.statuses(mid) == LIFECYCLE[:3], timeout=3)
    assert all(g.verified for g in receiver.requests)
