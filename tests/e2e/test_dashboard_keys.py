"""The dashboard's API keys over real HTTP (CONTRACT section 11): create
with scopes, rate limit and expiry, the key shown once; revoke; rotate; the
list with "last used", which the broker notes in memory on each accepted
key and writes from its flush loop, at most once a minute per key."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from broker import keys, store
from broker.settings import Settings
from tests.e2e.conftest import SECRET, Device, PhoneFactory, Server, send_sms, wait_for
from tests.e2e.test_dashboard_accounts import csrf_of, sign_up

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, pool_min=1, pool_max=10,
                    last_seen_flush_s=0.1)


def secret_of(html: str) -> str:
    found = re.search(r'<code id="new-key-secret">([^<]+)</code>', html)
    assert found, html[:2000]
    return found.group(1)


async def create(http: httpx.AsyncClient, **fields: str | list[str]) -> httpx.Response:
    page = await http.get("/dashboard/keys")
    assert page.status_code == 200
    return await http.post("/dashboard/keys", data={"csrf": csrf_of(page.text), **fields})


async def account_id(db: asyncpg.Connection, email: str = "ana@example.com") -> uuid.UUID:
    found: uuid.UUID = await db.fetchval("SELECT id FROM accounts WHERE email = $1", email)
    return found


async def admin_key(db: asyncpg.Connection, account: uuid.UUID) -> str:
    """A keys:write key made behind the dashboard's back, to call /keys with."""
    key, prefix = keys.make_secret(keys.KEY_KIND)
    await store.insert_key(db, account, "admin", prefix, keys.digest(SECRET, key),
                           ["keys:write"], None, None)
    return key


async def test_a_created_key_is_shown_once_and_works(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await sign_up(http)
    r = await create(http, name="website", **{"scopes[]": ["messages:read", "devices:read"]},
                     rate_limit="5", expires="30")
    assert r.status_code == 200
    secret = secret_of(r.text)
    assert 'data-copy="new-key-secret"' in r.text and "only time it is shown" in r.text
    row = await db.fetchrow("SELECT * FROM api_keys WHERE name = 'website'")
    assert row["scopes"] == ["devices:read", "messages:read"] and row["rate_limit"] == 5
    left = row["expires_at"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29, hours=23) < left <= dt.timedelta(days=30)
    assert (await http.get("/messages", headers={"x-api-key": secret})).status_code == 200
    assert (await send_sms(http, secret)).status_code == 403  # not messages:send

    again = await http.get("/dashboard/keys")
    assert secret not in again.text  # once
    assert f"smsgw_{row['prefix']}_" in again.text and "5/min" in again.text
    assert f'id="key-{row["id"]}"' in again.text and "Never" in again.text  # not used yet


async def test_defaults_and_a_typed_number_of_days(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await sign_up(http)
    r = await create(http, name="", expires="")
    assert r.status_code == 200
    r = await create(http, name="short", expires="365", expires_days="2")
    assert r.status_code == 200
    rows = {r["name"]: r for r in await db.fetch("SELECT * FROM api_keys")}
    assert rows[""]["scopes"] == ["messages:send"] and rows[""]["expires_at"] is None
    assert rows[""]["rate_limit"] is None
    left = rows["short"]["expires_at"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=1, hours=23) < left <= dt.timedelta(days=2)


@pytest.mark.parametrize(("fields", "complaint"), [
    ({"rate_limit": "fast"}, "The rate limit must be a whole number"),
    ({"rate_limit": "0"}, "The rate limit must be a whole number"),
    ({"expires_days": "-3"}, "The number of days must be a whole number"),
    ({"expires": "7"}, "Choose when the key expires"),
    ({"scopes[]": "messages:everything"}, "unknown scope(s): messages:everything"),
    ({"name": "x" * 101}, "longer than 100 characters"),
])
async def test_a_wrong_field_is_named_on_the_form(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        fields: dict[str, str], complaint: str) -> None:
    await sign_up(http)
    r = await create(http, **{"name": "kept", **fields})
    assert r.status_code == 400
    assert complaint in r.text.replace("&#39;", "'") and 'id="key-error"' in r.text
    assert 'id="create-key"' in r.text  # the form again, as typed
    if "name" not in fields:
        assert 'value="kept"' in r.text
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_revoke_and_rotate(server: Server, http: httpx.AsyncClient,
                                 db: asyncpg.Connection) -> None:
    await sign_up(http)
    first = secret_of((await create(http, name="one", **{"scopes[]": "messages:read"})).text)
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE name = 'one'")
    page = await http.get("/dashboard/keys")
    r = await http.post(f"/dashboard/keys/{key_id}/rotate", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 200 and "Key rotated: one" in r.text
    second = secret_of(r.text)
    assert second != first
    assert (await http.get("/messages", headers={"x-api-key": first})).status_code == 401
    assert (await http.get("/messages", headers={"x-api-key": second})).status_code == 200

    r = await http.post(f"/dashboard/keys/{key_id}/revoke", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/keys"
    refused = await http.get("/messages", headers={"x-api-key": second})
    assert refused.status_code == 401 and refused.json()["message"] == "API key revoked"
    listed = await http.get("/dashboard/keys")
    assert 'class="status revoked"' in listed.text
    assert f"/dashboard/keys/{key_id}/revoke" not in listed.text  # nothing left to do


async def test_another_accounts_key_is_not_found(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await sign_up(http, "bob@example.com")
    await create(http, name="bobs")
    bobs = await db.fetchval("SELECT id FROM api_keys WHERE name = 'bobs'")
    http.cookies.clear()
    await sign_up(http, "ana@example.com")
    page = await http.get("/dashboard/keys")
    assert "bobs" not in page.text and str(bobs) not in page.text
    for action in ("revoke", "rotate"):
        r = await http.post(f"/dashboard/keys/{bobs}/{action}",
                            data={"csrf": csrf_of(page.text)})
        assert r.status_code == 404 and "Key not found" in r.text, action
    r = await http.post("/dashboard/keys/not-a-uuid/revoke", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 404
    row = await db.fetchrow("SELECT revoked, prefix FROM api_keys WHERE id = $1", bobs)
    assert not row["revoked"]


async def test_forms_without_their_csrf_token_are_refused(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await sign_up(http)
    r = await http.post("/dashboard/keys", data={"name": "forged"})
    assert r.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0
    await create(http, name="mine")
    key_id, prefix = await db.fetchrow("SELECT id, prefix FROM api_keys")
    for action in ("revoke", "rotate"):
        r = await http.post(f"/dashboard/keys/{key_id}/{action}", data={"csrf": "forged"})
        assert r.status_code == 403, action
    assert await db.fetchrow("SELECT revoked, prefix FROM api_keys") == (False, prefix)


async def test_no_keys_page_without_a_session(server: Server, http: httpx.AsyncClient) -> None:
    r = await http.get("/dashboard/keys")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/dashboard/keys"
    r = await http.post(f"/dashboard/keys/{uuid.uuid4()}/revoke", data={"csrf": "x"})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_a_send_shows_when_the_key_was_last_used(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    await sign_up(http)
    account = await account_id(db)
    token, prefix = keys.make_secret(keys.TOKEN_KIND)
    row = await store.insert_device(db, account, "Phone", prefix, keys.digest(SECRET, token), 30)
    await phone(Device(id=str(row.id), name="Phone", token=token))
    secret = secret_of((await create(http, name="sender")).text)
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE name = 'sender'")
    admin = await admin_key(db, account)
    item = (await http.get(f"/keys/{key_id}", headers={"x-api-key": admin})).json()["data"]
    assert item["lastUsedAt"] is None

    before = dt.datetime.now(dt.UTC)
    assert (await send_sms(http, secret)).status_code == 201

    async def written() -> bool:
        return await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1",
                                 key_id) is not None
    await wait_for(written, what="last_used_at written by the flush loop")
    item = (await http.get(f"/keys/{key_id}", headers={"x-api-key": admin})).json()["data"]
    used = dt.datetime.fromisoformat(item["lastUsedAt"])
    assert before - dt.timedelta(seconds=1) <= used <= dt.datetime.now(dt.UTC)
    listed = (await http.get("/keys", headers={"x-api-key": admin})).json()["data"]
    assert {k["name"]: k["lastUsedAt"] for k in listed}["sender"] == item["lastUsedAt"]
    page = await http.get("/dashboard/keys")
    row = re.search(rf'<tr id="key-{key_id}">.*?</tr>', page.text, re.S)
    assert row and f'datetime="{item["lastUsedAt"]}"' in row.group(0)


async def test_a_hundred_requests_in_a_second_are_one_write(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    """Counted by a statement-level trigger: every UPDATE statement on
    api_keys, whether or not it changed a row."""
    await sign_up(http)
    secret = secret_of((await create(http, name="busy", **{"scopes[]": "messages:read"})).text)
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE name = 'busy'")
    await db.execute("""
        CREATE TABLE test_key_updates (n int NOT NULL);
        CREATE FUNCTION test_count_key_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO test_key_updates VALUES (1); RETURN NULL; END $$;
        CREATE TRIGGER test_count_key_update AFTER UPDATE ON api_keys
            FOR EACH STATEMENT EXECUTE FUNCTION test_count_key_update();""")
    notices: list[str] = []
    await db.add_listener(store.KEY_CHANGED, lambda *args: notices.append(args[3]))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await asyncio.gather(*(http.get("/messages", headers={"x-api-key": secret})
                                         for _ in range(100)))
        # Well within the minute a key's last use is written at most once in.
        assert loop.time() - started < 30.0
        assert [a.status_code for a in answers] == [200] * 100

        async def written() -> bool:
            return await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1",
                                     key_id) is not None
        await wait_for(written, what="last_used_at written")
        # Ten more flush rounds: nothing more is owed, nothing more is written.
        await asyncio.sleep(10 * server.broker.settings.last_seen_flush_s)
        assert await db.fetchval("SELECT count(*) FROM test_key_updates") == 1
        # Migration 0009: a last-used write is no change of the key, so no
        # broker is told to drop it from its cache; a revoke still is.
        assert notices == []
        await db.execute("UPDATE api_keys SET revoked = true WHERE id = $1", key_id)
        await wait_for(lambda: asyncio.sleep(0, bool(notices)), what="the revoke's notice")
        assert notices == [str(key_id)]
    finally:
        await db.execute("DROP TRIGGER test_count_key_update ON api_keys;"
                         " DROP FUNCTION test_count_key_update(); DROP TABLE test_key_updates")
