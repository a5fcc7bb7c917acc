"""Accounts and credentials of an exposed broker (issue 11 items 2, 3, 4,
8b, 9; contract section 12), each probe replayed against a real server on
loopback with real PostgreSQL and real concurrency: concurrent sends against
a small plan, in one broker and in two on one database; floods of random
keys, tokens and passwords; two credentials in one request; one account
flooding the API while another is served; idempotency rows past 24 h."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from broker.clock import month_start, utcnow
from broker.settings import Settings
from tests.conftest import error
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


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10)


async def set_plan(db: asyncpg.Connection, account: Account, monthly_messages: int) -> None:
    await db.execute("INSERT INTO plans (name, monthly_messages, max_devices)"
                     " VALUES ('small', $1, 100)", monthly_messages)
    await db.execute("UPDATE accounts SET plan = 'small' WHERE id = $1", account.id)


async def ws_phone(server: Server, device: Device) -> ClientConnection:
    """A phone of `device` connected to `server`, past `welcome`."""
    ws = await connect(server.ws_url, additional_headers={
        "Authorization": f"Bearer {device.token}"}, compression=None, open_timeout=5)
    await ws.send(json.dumps({"type": "hello", "protocol": 1, "appVersion": "test/1"}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
    return ws


@pytest.fixture
async def second_server(db: asyncpg.Connection, database_url: str,
                        broker_settings: Settings) -> AsyncIterator[Server]:
    """Another broker process's worth of state (its own pool, presence, caches)
    on the same database."""
    srv = await start_server(broker_settings.with_(node="second"), database_url)
    try:
        yield srv
    finally:
        await stop_server(srv)


# --- item 2: the monthly quota under concurrency ----------------------------------------


QUOTA = 5
CONCURRENT = 60


async def concurrent_sends(clients: list[httpx.AsyncClient], key: str) -> list[httpx.Response]:
    """CONCURRENT sends at once, spread over `clients`; every other one with
    its own Idempotency-Key (the send's transaction path)."""
    return list(await asyncio.gather(*(
        send_sms(clients[i % len(clients)], key, message=f"n{i}",
                 headers={"Idempotency-Key": f"k{i}"} if i % 2 else {})
        for i in range(CONCURRENT))))


async def assert_quota_held(db: asyncpg.Connection, account: Account,
                            answers: list[httpx.Response]) -> None:
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] * QUOTA + [403] * (CONCURRENT - QUOTA), statuses
    refused = [r.json() for r in answers if r.status_code == 403]
    assert all(body == error(403, "Monthly message quota exceeded") for body in refused)
    assert await db.fetchval("SELECT count(*) FROM messages") == QUOTA
    assert await db.fetchval("SELECT used FROM account_usage WHERE account_id = $1 AND month = $2",
                             account.id, month_start(utcnow()).date()) == QUOTA


async def test_sixty_concurrent_sends_against_a_plan_of_five_accept_exactly_five(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """The issue's probe: 27 of 60 were accepted when the count moved in
    memory after the INSERT. The quota is now taken in the INSERT itself."""
    await set_plan(db, account, QUOTA)
    p = await phone(await account.make_device(send_rate=0))
    await assert_quota_held(db, account, await concurrent_sends([http], account.key))
    for _ in range(QUOTA):
        await p.expect("send")
    await p.nothing(0.2)


async def test_the_quota_holds_across_two_brokers_on_one_database(
        server: Server, second_server: Server, account: Account,
        db: asyncpg.Connection) -> None:
    """Two processes' worth of state, one quota: each broker has a phone of
    the account, and the sends are spread over both."""
    await set_plan(db, account, QUOTA)
    phones = [await ws_phone(srv, await account.make_device(f"P{i}", send_rate=0))
              for i, srv in enumerate((server, second_server))]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as one, \
                httpx.AsyncClient(base_url=second_server.url, timeout=10) as two:
            answers = await concurrent_sends([one, two], account.key)
        await assert_quota_held(db, account, answers)
        by_server = {r.url.port: 0 for r in answers}
        for r in answers:
            by_server[r.url.port] += r.status_code == 201
        assert len(by_server) == 2
    finally:
        for ws in phones:
            await ws.close()


async def test_a_new_month_opens_with_the_messages_it_already_holds(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """Messages written before the month's usage row (an upgrade from before
    migration 0004) count: the first send of the month counts them."""
    await set_plan(db, account, 3)
    device = await account.make_device(send_rate=0)
    await db.execute(
        "INSERT INTO messages (id, account_id, device_id, recipient, body, status, created_at)"
        " SELECT gen_random_uuid(), $1, $2::uuid, '+16502530000', 'earlier', 'delivered', $3"
        " FROM generate_series(1, 2)", account.id, device.id, utcnow())
    # Last month's do not.
    await db.execute(
        "INSERT INTO messages (id, account_id, device_id, recipient, body, status, created_at)"
        " VALUES (gen_random_uuid(), $1, $2::uuid, '+16502530000', 'old', 'delivered', $3)",
        account.id, device.id, month_start(utcnow()) - dt.timedelta(seconds=1))
    await phone(device)
    assert (await send_sms(http, account.key)).status_code == 201
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (403, error(403, "Monthly message quota exceeded"))
