"""Accounts and credentials of an exposed broker (issue 11 items 2, 3, 4,
8b, 9; contract section 12), each probe replayed against a real server on
loopback with real PostgreSQL and real concurrency: concurrent sends against
a small plan, in one broker and in two on one database; floods of random
keys, tokens and passwords; two credentials in one request; one account
flooding the API while another is served; idempotency rows past 24 h."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from broker import keys, store
from broker.clock import month_start, utcnow
from broker.delivery.sweeper import Sweeper
from broker.services import passwords
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
    wait_for,
)
from tests.e2e.smsgate_app import API, register
from tests.hostile.conftest import ServerFactory

pytestmark = pytest.mark.timeout(60)


# Failed credentials one client address may send within a minute (the
# default is 30; fewer here, so that each probe is short).
FAILURES = 10
LOGIN_FAILURES = 3
ATTACKER = "127.0.0.2"  # the attacker's loopback address; everyone else is 127.0.0.1


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10, auth_failures=FAILURES,
                    login_failures=LOGIN_FAILURES)


def client_from(server: Server, address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from `address`."""
    return httpx.AsyncClient(base_url=server.url, timeout=10,
                             transport=httpx.AsyncHTTPTransport(local_address=address))


def lookups(result: str) -> float:
    """API-key checks that went to PostgreSQL ("found", "none") or were
    answered by the negative cache ("remembered"), from /metrics' registry."""
    return REGISTRY.get_sample_value("smsdora_key_lookups_total", {"result": result}) or 0.0


def assert_throttled(r: httpx.Response, window_s: float = 60.0, failures: int = FAILURES) -> None:
    """429 in the error shape, and a Retry-After of at most the time the
    budget takes to give back one attempt: `failures` within `window_s`
    refill one every window_s / failures seconds (not the whole window)."""
    assert (r.status_code, r.json()) == (429, error(429, "Too many failed attempts")), r.text
    assert 1 <= int(r.headers["retry-after"]) <= math.ceil(window_s / failures), r.headers


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


PASSWORD = "correct horse battery staple"
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
    assert await db.fetchval("SELECT sum(used) FROM account_usage WHERE account_id = $1"
                             " AND month = $2", account.id, month_start(utcnow()).date()) == QUOTA


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


# --- item 3: failed credentials are not free --------------------------------------------


def random_key() -> str:
    return keys.make_secret(keys.KEY_KIND)[0]


async def test_random_keys_are_throttled_per_address_and_the_legitimate_client_is_not(
        server: Server, http: httpx.AsyncClient, account: Account) -> None:
    """The issue's probe, 2,600 random keys a second, each a query: now an
    address gets FAILURES of them, then 429 with Retry-After before any
    lookup, while a client on another address goes on as before."""
    queried = lookups("none")
    async with client_from(server, ATTACKER) as attacker:
        answers = []
        for _ in range(3):  # three waves, each all at once
            wave = await asyncio.gather(*(
                attacker.get("/messages", headers={"x-api-key": random_key()})
                for _ in range(FAILURES)), http.get("/messages", headers=account.headers))
            assert wave[-1].status_code == 200, wave[-1].text  # the legitimate client
            answers += wave[:-1]
        assert sorted(r.status_code for r in answers) == [401] * FAILURES + [429] * 2 * FAILURES, \
            [r.status_code for r in answers]
        for r in answers:
            if r.status_code == 429:
                assert_throttled(r)
        # Throttled: refused before the key is looked at, whatever it is.
        assert_throttled(await attacker.get("/messages", headers=account.headers))
    assert lookups("none") - queried == FAILURES
    # Missing credentials are no guesses: not counted, never throttled.
    for _ in range(2 * FAILURES):
        assert (await http.get("/messages")).status_code == 401
    assert (await http.get("/messages", headers=account.headers)).status_code == 200


async def test_guesses_sent_all_at_once_do_not_slip_past_the_budget(
        server: Server, account: Account) -> None:
    """An address that failed before has its budget taken before each lookup,
    not after: 50 guesses at once with 9 left are 9 lookups, not 50."""
    queried = lookups("none")
    async with client_from(server, ATTACKER) as attacker:
        first = await attacker.get("/messages", headers={"x-api-key": random_key()})
        assert first.status_code == 401
        wave = await asyncio.gather(*(attacker.get("/messages", headers={
            "x-api-key": random_key()}) for _ in range(50)))
        assert sorted(r.status_code for r in wave) == [401] * (FAILURES - 1) + [429] * 41
    assert lookups("none") - queried == FAILURES


async def test_an_unknown_key_sent_again_costs_no_query_until_a_key_takes_its_prefix(
        server: Server, http: httpx.AsyncClient, account: Account) -> None:
    """The negative cache: a key that matched nothing is known to match
    nothing for a while, without a query; a key created with that prefix is
    announced (NOTIFY) and works at once."""
    ghost = random_key()
    prefix = keys.parse_prefix(keys.KEY_KIND, ghost)
    assert prefix is not None
    queried, remembered = lookups("none"), lookups("remembered")
    for _ in range(FAILURES - 1):
        r = await http.get("/messages", headers={"x-api-key": ghost})
        assert (r.status_code, r.json()) == (401, error(401, "Invalid API key"))
    assert (lookups("none") - queried, lookups("remembered") - remembered) == (1, FAILURES - 2)
    # The same prefix is issued now (as the key's owner would get it).
    await store_key(account, ghost)

    async def forgotten() -> bool:
        return not server.broker.unknown_keys.has(prefix, time.monotonic())
    await wait_for(forgotten, what="the new key's prefix to leave the negative cache")
    assert (await http.get("/messages", headers={"x-api-key": ghost})).status_code == 200


async def store_key(account: Account, full: str) -> None:
    prefix = keys.parse_prefix(keys.KEY_KIND, full)
    assert prefix is not None
    await store.insert_key(account.db, account.id, "taken", prefix,
                           keys.digest(account.secret, full), ["messages:read"], None, None)


async def test_random_device_tokens_on_the_websocket_are_throttled_before_the_upgrade(
        server: Server, account: Account) -> None:
    legitimate = await account.make_device()
    statuses = []
    for _ in range(FAILURES + 3):
        token = keys.make_secret(keys.TOKEN_KIND)[0]
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                          open_timeout=5, local_addr=(ATTACKER, 0))
        statuses.append(refused.value.response.status_code)
    assert statuses == [401] * FAILURES + [429] * 3
    assert refused.value.response.headers["Retry-After"].isdigit()
    # The phone's own socket, from its own address, is let in.
    await (await ws_phone(server, legitimate)).close()


async def test_random_tokens_on_the_mobile_api_are_throttled_and_the_phone_keeps_working(
        server: Server, http: httpx.AsyncClient, account: Account) -> None:
    """The SMS Gateway app understands 401 only, and a 401 makes it register
    again: an address past its budget gets 429 (the app retries later,
    registration kept), never a 401 for a token it did not check."""
    app = await register(http, account.key)
    async with client_from(server, ATTACKER) as attacker:
        statuses = [(await attacker.get(f"{API}/settings", headers={
            "Authorization": f"Bearer {keys.make_secret(keys.TOKEN_KIND)[0]}"})).status_code
            for _ in range(FAILURES + 2)]
        assert statuses == [401] * FAILURES + [429] * 2
        assert_throttled(await attacker.get(f"{API}/settings", headers={
            "Authorization": f"Bearer {app.token}"}))
    r = await http.get(f"{API}/settings", headers={"Authorization": f"Bearer {app.token}"})
    assert r.status_code == 200, r.text


def basic(email: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{email}:{password}".encode()).decode()}


async def test_failed_passwords_are_throttled_per_address_and_per_email(
        server: Server, http: httpx.AsyncClient, account: Account,
        make_account: Callable[[str], Awaitable[Account]]) -> None:
    """Each guess costs an argon2 verify (about 90 ms of CPU): an email gets
    LOGIN_FAILURES wrong passwords from all addresses together, an address
    FAILURES guesses at all emails; then 429 before any verify."""
    await account.db.execute("UPDATE accounts SET password_hash = $1 WHERE id = $2",
                             await passwords.hash_password(PASSWORD), account.id)
    other = await make_account("other@example.com")
    throttled = REGISTRY.get_sample_value("smsdora_credentials_throttled_total",
                                          {"per": "email"}) or 0.0

    async def code(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
        return await client.get(f"{API}/user/code", headers=basic(email, password))

    # One email, guessed at from a new address each time.
    statuses = []
    for i in range(LOGIN_FAILURES + 2):
        async with client_from(server, f"127.0.1.{i + 1}") as guesser:
            statuses.append((await code(guesser, account.email, f"guess {i}")).status_code)
    assert statuses == [401] * LOGIN_FAILURES + [429] * 2
    assert REGISTRY.get_sample_value("smsdora_credentials_throttled_total",
                                     {"per": "email"}) == throttled + 2
    # The trade-off, documented: the right password waits out the window too.
    assert_throttled(await code(http, account.email, PASSWORD), window_s=900, failures=LOGIN_FAILURES)
    # Another email is not held back by it.
    assert (await code(http, other.email, "wrong")).status_code == 401
    # One address guessing at many emails (each under its own budget).
    async with client_from(server, ATTACKER) as attacker:
        statuses = [(await code(attacker, f"nobody{i}@example.com", "x")).status_code
                    for i in range(FAILURES + 1)]
    assert statuses == [401] * FAILURES + [429]


async def test_guessing_the_current_password_from_a_phone_is_throttled(
        server: Server, http: httpx.AsyncClient, account: Account) -> None:
    """`PATCH /user/password` checks the account's current password: a phone
    (or whoever holds its token) gets LOGIN_FAILURES wrong guesses at that
    account, from every address together, then 429 before any verify."""
    await account.db.execute("UPDATE accounts SET password_hash = $1 WHERE id = $2",
                             await passwords.hash_password(PASSWORD), account.id)
    app = await register(http, account.key)

    async def change(client: httpx.AsyncClient, current: str) -> httpx.Response:
        return await client.patch(f"{API}/user/password", headers={
            "Authorization": f"Bearer {app.token}"},
            json={"currentPassword": current, "newPassword": "a new passphrase, long"})

    statuses = []
    for i in range(LOGIN_FAILURES + 2):
        async with client_from(server, f"127.0.2.{i + 1}") as guesser:
            statuses.append((await change(guesser, f"guess {i}")).status_code)
    assert statuses == [401] * LOGIN_FAILURES + [429] * 2
    assert_throttled(await change(http, PASSWORD), window_s=900, failures=LOGIN_FAILURES)
    stored_hash = await account.db.fetchval("SELECT password_hash FROM accounts WHERE id = $1",
                                            account.id)
    assert await passwords.verify(stored_hash, PASSWORD)  # unchanged


# --- item 8b: two credentials in one request ----------------------------------------------


AMBIGUOUS = "Ambiguous credentials: send one key, in one header"


async def test_two_different_credentials_are_a_400_and_nothing_is_sent(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """RFC 6750 section 2: one method per request. Which of two keys is the
    caller? x-api-key used to win silently, so a proxy judging the request by
    its Bearer saw another caller than the broker did."""
    p = await phone(await account.make_device())
    other = await account.make_key(["messages:send"])
    body = {"recipient": "+16502530000", "message": "hi"}
    for headers in ([("x-api-key", account.key), ("authorization", f"Bearer {other}")],
                    [("x-api-key", account.key), ("x-api-key", other)],
                    [("authorization", f"Bearer {account.key}"),
                     ("authorization", f"Bearer {other}")],
                    [("x-api-key", other), ("authorization", f"Bearer {random_key()}")]):
        r = await http.post("/messages/send", json=body, headers=headers)
        assert (r.status_code, r.json()) == (400, error(400, AMBIGUOUS)), headers
        r = await http.get("/messages", headers=headers)
        assert (r.status_code, r.json()) == (400, error(400, AMBIGUOUS)), headers
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    # The same key in both headers is one credential.
    r = await http.post("/messages/send", json=body, headers=[
        ("x-api-key", account.key), ("authorization", f"Bearer {account.key}")])
    assert r.status_code == 201, r.text
    assert (await p.expect("send"))["id"] == r.json()["data"]["id"]
    # A phone with two tokens is refused before the upgrade too.
    a, b = await account.make_device("A"), await account.make_device("B")
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.ws_url, additional_headers=[
            ("Authorization", f"Bearer {a.token}"), ("Authorization", f"Bearer {b.token}")],
            open_timeout=5)
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body or b"{}") == error(400, AMBIGUOUS)


# --- item 9: idempotency rows purged --------------------------------------------------


async def idempotency_rows(db: asyncpg.Connection, account: Account, keys_: list[str],
                           age: dt.timedelta) -> None:
    for k in keys_:
        await db.execute(
            "INSERT INTO idempotency_keys (account_id, key, request_hash, message_id, response,"
            " created_at) VALUES ($1, $2, '\\x00', gen_random_uuid(), '\\x7b7d', $3)",
            account.id, k, utcnow() - age)


async def remaining(db: asyncpg.Connection) -> list[str]:
    return [r["key"] for r in await db.fetch("SELECT key FROM idempotency_keys ORDER BY key")]


async def test_idempotency_rows_past_24_hours_are_purged_by_the_sweeper_in_batches(
        serve_with: ServerFactory, account: Account, db: asyncpg.Connection) -> None:
    """Each row holds a whole response; they used to stay forever. The sweep
    deletes at most a batch of them, oldest first; rows under 24 h stay."""
    srv = await serve_with(sweep_s=3600.0, idempotency_purge_batch=2)  # sweeps by hand
    old = [f"old-{i}" for i in range(5)]
    await idempotency_rows(db, account, old, dt.timedelta(hours=25))
    await idempotency_rows(db, account, ["new-0", "new-1"], dt.timedelta(hours=23))
    sweeper = Sweeper(srv.broker.pool, srv.broker.presence, srv.broker.settings)
    left = []
    for _ in range(3):
        await sweeper.sweep()
        left.append(len([k for k in await remaining(db) if k.startswith("old")]))
    assert left == [3, 1, 0]
    assert await remaining(db) == ["new-0", "new-1"]


async def test_the_running_sweeper_purges_idempotency_rows(
        serve_with: ServerFactory, account: Account, db: asyncpg.Connection) -> None:
    await idempotency_rows(db, account, ["old"], dt.timedelta(hours=24, seconds=5))
    await idempotency_rows(db, account, ["recent"], dt.timedelta(hours=23, minutes=59))
    await serve_with(sweep_s=0.1)

    async def purged() -> bool:
        return await remaining(db) == ["recent"]
    await wait_for(purged, what="the sweeper to purge the row past 24 h")


# --- item 4: one account cannot slow all others -------------------------------------------


async def test_an_account_past_its_request_budget_gets_429_and_another_is_served(
        serve_with: ServerFactory, make_account: Callable[[str], Awaitable[Account]]) -> None:
    """A budget for each account, all its keys together, beside each key's
    own per-minute limit (default 2,000 a second, 5,000 at once; small here)."""
    srv = await serve_with(account_rate=1.0, account_burst=10)
    flooder, other = await make_account("flooder@example.com"), await make_account("b@example.com")
    second_key = await flooder.make_key(["messages:read"])
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        answers = await asyncio.gather(*(
            client.get("/messages", headers={"x-api-key": (flooder.key, second_key)[i % 2]})
            for i in range(30)))
        assert sorted(r.status_code for r in answers) == [200] * 10 + [429] * 20
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.json() == error(429, "Too many requests for this account")
        assert refused.headers["retry-after"] == "1"
        for _ in range(5):
            assert (await client.get("/messages", headers=other.headers)).status_code == 200


async def test_one_account_holds_at_most_its_share_of_the_pool(
        serve_with: ServerFactory, make_account: Callable[[str], Awaitable[Account]],
        db: asyncpg.Connection) -> None:
    """Sends whose statements hang (here: each on its Idempotency-Key, which
    a transaction of the test holds) each keep a pool connection. With
    nothing to bound them, 20 of one account took the pool and every other
    account waited out the request deadline (503). Now that account holds
    at most its share (2 of 4), its other requests wait their turn and then
    get 429, and another account is served meanwhile from the rest of the
    pool. (The keyed sends' batch gives way after its KEY_WAIT, 200 ms, and
    each goes alone: that is where each waits for its key, under the share.)"""
    srv = await serve_with(pool_min=4, pool_max=4, account_pool_share=0.5,
                           account_pool_wait_s=0.5)
    flooder, other = await make_account("flooder@example.com"), await make_account("b@example.com")
    # A phone, so that each send picks it and goes on to claim its key.
    ws = await ws_phone(srv, await flooder.make_device(send_rate=0))
    holder = await asyncpg.connect(srv.database_url)
    blocker = holder.transaction()
    await blocker.start()
    await holder.execute(
        "INSERT INTO idempotency_keys (account_id, key, request_hash, message_id, response)"
        " SELECT $1, 'key-' || i, '\\x00', gen_random_uuid(), ''"
        " FROM generate_series(1, 20) AS i", flooder.id)
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        sends = [asyncio.ensure_future(send_sms(client, flooder.key,
                                                headers={"Idempotency-Key": f"key-{i}"}))
                 for i in range(1, 21)]
        try:
            async def two_sends_hang() -> bool:
                return await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'") >= 2
            await wait_for(two_sends_hang, what="the flooder's sends to hang on the key")
            started = time.monotonic()
            for _ in range(5):
                r = await client.get("/messages", headers=other.headers)
                assert r.status_code == 200, r.text
            assert time.monotonic() - started < 2.0  # served, not after the 5 s deadline

            # All but the two holding the share give up waiting for a slot.
            async def all_but_two_answered() -> bool:
                return sum(t.done() for t in sends) == len(sends) - 2
            await wait_for(all_but_two_answered, what="the flooder's other sends to be refused")
            assert srv.broker.pool_shares.held(flooder.id) == 2
            busy = [t.result() for t in sends if t.done()]
            holding = [t for t in sends if not t.done()]
        finally:
            await blocker.rollback()
            await holder.close()
        # The two that held the share carry on once the key is free.
        assert [r.status_code for r in await asyncio.gather(*holding)] == [201, 201]
        await ws.close()
    assert {(r.status_code, r.json()["message"]) for r in busy} == {
        (429, "Too many concurrent requests for this account")}
    assert all(r.headers["retry-after"] == "1" for r in busy)
