"""API keys, scopes, rate limits and plans end to end (contract sections 3
and 7): 401, 403 and rotation, each asserted as the whole error body."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import asyncpg
import httpx
import pytest

from broker import keys, store
from tests.conftest import error
from tests.e2e.conftest import SECRET, Account, PhoneFactory, Server, send_sms, wait_for

pytestmark = pytest.mark.timeout(20)




async def count_messages(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM messages"))


async def key_row(db: asyncpg.Connection, key: str) -> store.KeyRow:
    prefix = keys.parse_prefix(keys.KEY_KIND, key)
    assert prefix is not None
    row = await store.key_by_prefix(db, prefix)
    assert row is not None
    return row


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- 401 -----------------------------------------------------------------------


async def test_both_key_headers_are_accepted(http: httpx.AsyncClient, account: Account,
                                             phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    for headers in [{"x-api-key": account.key}, {"Authorization": f"Bearer {account.key}"},
                    {"authorization": f"bearer {account.key}"}]:
        r = await http.post("/messages/send", json={"recipient": "+16502530000",
                                                     "message": "hi"}, headers=headers)
        assert r.status_code == 201, (headers, r.text)
        assert (await p.expect("send"))["id"] == r.json()["data"]["id"]


async def test_missing_or_bad_key_is_401_invalid(http: httpx.AsyncClient, account: Account,
                                                 phone: PhoneFactory,
                                                 db: asyncpg.Connection) -> None:
    device = await account.make_device()
    await phone(device)
    prefix = keys.parse_prefix(keys.KEY_KIND, account.key)
    unknown, _ = keys.make_secret(keys.KEY_KIND)
    cases: list[tuple[str, dict[str, str]]] = [
        ("no key", {}),
        ("empty x-api-key", {"x-api-key": ""}),
        ("malformed", {"x-api-key": "hello"}),
        ("not hex prefix", {"x-api-key": "smsgw_zzzzzzzz_" + "a" * 43}),
        ("short secret", {"x-api-key": f"smsgw_{prefix}_short"}),
        ("unknown prefix", {"x-api-key": unknown}),
        ("right prefix, wrong secret", {"x-api-key": f"smsgw_{prefix}_" + "b" * 43}),
        ("wrong secret via Bearer", {"Authorization": f"Bearer smsgw_{prefix}_" + "b" * 43}),
        ("Basic scheme", {"Authorization": f"Basic {account.key}"}),
        ("a device token is not an API key", {"x-api-key": device.token}),
    ]
    for what, headers in cases:
        r = await http.post("/messages/send", json={"recipient": "+16502530000",
                                                     "message": "hi"}, headers=headers)
        assert (r.status_code, r.json()) == (401, error(401, "Invalid API key")), what
    assert await count_messages(db) == 0


async def test_expired_key_is_401_expired(http: httpx.AsyncClient, account: Account,
                                          phone: PhoneFactory, db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    expired = await account.make_key(["messages:send"], expires_at=now() - dt.timedelta(seconds=1))
    r = await send_sms(http, expired)
    assert (r.status_code, r.json()) == (401, error(401, "API key expired"))
    still_valid = await account.make_key(["messages:send"],
                                         expires_at=now() + dt.timedelta(hours=1))
    assert (await send_sms(http, still_valid)).status_code == 201
    assert await count_messages(db) == 1


async def test_revoked_key_is_401_revoked_at_once(http: httpx.AsyncClient, account: Account,
                                                  phone: PhoneFactory,
                                                  db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    key = await account.make_key(["messages:send"])
    assert (await send_sms(http, key)).status_code == 201
    assert await store.revoke_key(db, (await key_row(db, key)).id, account.id)
    r = await send_sms(http, key)
    assert (r.status_code, r.json()) == (401, error(401, "API key revoked"))
    # Saying "revoked" is only for whoever holds the real secret.
    prefix = keys.parse_prefix(keys.KEY_KIND, key)
    r = await send_sms(http, f"smsgw_{prefix}_" + "c" * 43)
    assert (r.status_code, r.json()) == (401, error(401, "Invalid API key"))
    assert await count_messages(db) == 1


async def test_rotated_key_keeps_id_and_scopes_and_old_secret_stops_at_once(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    expires = now() + dt.timedelta(days=1)
    old = await account.make_key(["messages:send", "messages:read"], rate_limit=100,
                                 expires_at=expires, name="ci")
    before = await key_row(db, old)
    assert (await send_sms(http, old)).status_code == 201

    new, prefix = keys.make_secret(keys.KEY_KIND)
    rotated = await store.rotate_key(db, before.id, prefix, keys.digest(SECRET, new), account.id)
    assert rotated is not None

    r = await send_sms(http, old)
    assert (r.status_code, r.json()) == (401, error(401, "Invalid API key"))
    r = await send_sms(http, new)
    assert r.status_code == 201, r.text
    listed = await http.get("/messages", headers={"x-api-key": new})  # messages:read kept
    assert listed.status_code == 200 and len(listed.json()["data"]) == 2
    r = await http.get("/devices", headers={"x-api-key": new})  # and nothing more
    assert (r.status_code, r.json()) == (403, error(403, "Missing devices:read scope"))
    after = await key_row(db, new)
    assert (after.id, after.name, sorted(after.scopes), after.rate_limit, after.expires_at) == \
        (before.id, "ci", ["messages:read", "messages:send"], 100, before.expires_at)


# --- 403 Rate limit ---------------------------------------------------------------


async def test_rate_limit_refuses_the_third_request_in_the_window_with_retry_after(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    limited = await account.make_key(["messages:send"], rate_limit=2)
    for _ in range(2):
        assert (await send_sms(http, limited)).status_code == 201
        await p.expect("send")
    r = await send_sms(http, limited)
    assert (r.status_code, r.json()) == (403, error(403, "Rate limit exceeded"))
    # Both hits are well under a second old: the window frees up in ~60 s.
    assert int(r.headers["retry-after"]) in (59, 60), r.headers["retry-after"]
    assert await count_messages(db) == 2
    await p.nothing(0.1)


async def test_rate_limit_counts_per_key(http: httpx.AsyncClient, account: Account,
                                         phone: PhoneFactory) -> None:
    await phone(await account.make_device(send_rate=0))
    a = await account.make_key(["messages:send"], rate_limit=2)
    b = await account.make_key(["messages:send"], rate_limit=2)
    assert [(await send_sms(http, a)).status_code for _ in range(3)] == [201, 201, 403]
    assert [(await send_sms(http, b)).status_code for _ in range(3)] == [201, 201, 403]
    # The account's unlimited key is untouched by both.
    assert [(await send_sms(http, account.key)).status_code for _ in range(5)] == [201] * 5


async def test_rate_limit_applies_to_reads_too(http: httpx.AsyncClient,
                                               account: Account) -> None:
    reader = await account.make_key(["messages:read"], rate_limit=2)
    codes = [(await http.get("/messages", headers={"x-api-key": reader})).status_code
             for _ in range(3)]
    assert codes == [200, 200, 403]


# --- 403 scopes -------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("messages:send", "POST", "/messages/send", {"recipient": "+16502530000", "message": "hi"}),
    ("messages:read", "GET", "/messages", None),
    ("messages:read", "GET", "/messages/00000000-0000-0000-0000-000000000000", None),
    ("devices:read", "GET", "/devices", None),
    ("devices:write", "POST", "/devices", {"name": "New phone"}),
]


async def test_each_endpoint_needs_its_scope(http: httpx.AsyncClient, account: Account,
                                             phone: PhoneFactory,
                                             db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    for scope, method, path, body in ENDPOINTS:
        others = [s for s in ("messages:send", "messages:read", "devices:read", "devices:write")
                  if s != scope]
        key = await account.make_key(others)
        r = await http.request(method, path, json=body, headers={"x-api-key": key})
        assert (r.status_code, r.json()) == (403, error(403, f"Missing {scope} scope")), path
        # With just that scope the request gets past the check (what it then
        # answers is each endpoint's own test).
        key = await account.make_key([scope])
        r = await http.request(method, path, json=body, headers={"x-api-key": key})
        assert r.status_code not in (401, 403), (path, r.text)
    assert await count_messages(db) == 1


async def test_keys_write_implies_every_other_scope(http: httpx.AsyncClient, account: Account,
                                                    phone: PhoneFactory) -> None:
    await phone(await account.make_device())
    admin = await account.make_key(["keys:write"])
    for _, method, path, body in ENDPOINTS:
        r = await http.request(method, path, json=body, headers={"x-api-key": admin})
        assert r.status_code not in (401, 403), (path, r.text)
    r = await http.get("/messages", headers={"x-api-key": admin})
    assert r.status_code == 200 and len(r.json()["data"]) == 1


# --- 403 plans --------------------------------------------------------------------


async def set_plan(db: asyncpg.Connection, account: Account, *, monthly_messages: int = 1000,
                   max_devices: int = 1000) -> None:
    await db.execute("INSERT INTO plans (name, monthly_messages, max_devices)"
                     " VALUES ('tiny', $1, $2)", monthly_messages, max_devices)
    await db.execute("UPDATE accounts SET plan = 'tiny' WHERE id = $1", account.id)


async def test_monthly_quota_is_403_once_used_up(http: httpx.AsyncClient, account: Account,
                                                 phone: PhoneFactory,
                                                 db: asyncpg.Connection) -> None:
    # The broker counts the month in memory from its first send: plan first.
    await set_plan(db, account, monthly_messages=2)
    p = await phone(await account.make_device())
    first = await send_sms(http, account.key, headers={"Idempotency-Key": "first"})
    assert first.status_code == 201
    second = await send_sms(http, account.key)
    assert second.status_code == 201
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (403, error(403, "Monthly message quota exceeded"))
    assert await count_messages(db) == 2
    # A replay is not a new message: it still answers the first response.
    again = await send_sms(http, account.key, headers={"Idempotency-Key": "first"})
    assert (again.status_code, again.content) == (201, first.content)
    assert [(await p.expect("send"))["id"] for _ in range(2)] == \
        [first.json()["data"]["id"], second.json()["data"]["id"]]
    await p.nothing(0.1)  # neither the refused send nor the replay reached the phone


async def test_monthly_quota_counts_messages_already_in_the_database(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    await set_plan(db, account, monthly_messages=1)
    device = await account.make_device()
    await db.execute(
        "INSERT INTO messages (id, account_id, device_id, recipient, body, status)"
        " VALUES (gen_random_uuid(), $1, $2::uuid, '+16502530000', 'earlier', 'delivered')",
        account.id, device.id)
    await phone(device)
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (403, error(403, "Monthly message quota exceeded"))


async def test_device_limit_is_403_on_post_devices(http: httpx.AsyncClient, account: Account,
                                                   db: asyncpg.Connection) -> None:
    await set_plan(db, account, max_devices=1)
    await account.make_device("First")
    r = await http.post("/devices", json={"name": "Second"}, headers=account.headers)
    assert (r.status_code, r.json()) == (403, error(403, "Device limit reached"))
    assert await db.fetchval("SELECT count(*) FROM devices") == 1


async def test_the_key_cache_hears_of_a_revocation_by_notify(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """Sends check the key from the broker's cache; a trigger on api_keys
    NOTIFYs every broker, which drops the key from its cache."""
    await phone(await account.make_device())
    key = await account.make_key(["messages:send"])
    prefix = keys.parse_prefix(keys.KEY_KIND, key)
    assert prefix is not None
    assert (await send_sms(http, key)).status_code == 201
    cache = server.broker.key_cache
    assert cache.get(prefix, time.monotonic()) is not None
    await store.revoke_key(db, (await key_row(db, key)).id, account.id)

    async def dropped() -> bool:
        return cache.get(prefix, time.monotonic()) is None
    await wait_for(dropped, what="the revoked key to leave the cache")
