"""broker/services/devices.py and broker/services/keys.py against the real
PostgreSQL of the test session: the registration and key issue that the
CLI and the HTTP API share (contract sections 3, 4 and 6)."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import pytest

from broker import keys, store
from broker.errors import BadRequest, Forbidden
from broker.services import devices as device_service
from broker.services import keys as key_service
from tests.conftest import new_account

pytestmark = pytest.mark.timeout(30)

SECRET = b"services-test-secret"


async def device_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM devices"))


async def key_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM api_keys"))


# --- devices.register -------------------------------------------------------


async def test_register_returns_a_device_token_stored_only_as_its_hmac(
        db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    device, token = await device_service.register(db, SECRET, acc.id, "hall phone", 12)
    prefix = keys.parse_prefix(keys.TOKEN_KIND, token)
    assert prefix is not None
    assert keys.parse_prefix(keys.KEY_KIND, token) is None  # a device token, not an API key
    assert (device.account_id, device.name, device.send_rate, device.active) == (
        acc.id, "hall phone", 12, True)
    stored = await db.fetchrow("SELECT token_prefix, token_hash FROM devices WHERE id = $1",
                               device.id)
    assert stored is not None
    assert stored["token_prefix"] == prefix
    assert stored["token_hash"] == device.token_hash == keys.digest(SECRET, token)
    assert token.encode() not in stored["token_hash"]
    # The token finds its device the way a phone's connect looks it up.
    found = await store.devices_by_token_prefix(db, [prefix])
    assert found[prefix].id == device.id


async def test_two_registrations_get_different_tokens(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    first = await device_service.register(db, SECRET, acc.id, "a", 0)
    second = await device_service.register(db, SECRET, acc.id, "b", 0)
    assert first.token != second.token and first.device.id != second.device.id


async def test_the_plans_device_limit_is_a_named_forbidden(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO plans (name, monthly_messages, max_devices)"
                     " VALUES ('solo', 100, 1)")
    acc = await new_account(db, plan="solo")
    await device_service.register(db, SECRET, acc.id, "first", 0)
    with pytest.raises(device_service.DeviceLimit) as raised:
        await device_service.register(db, SECRET, acc.id, "second", 0)
    assert isinstance(raised.value, Forbidden) and raised.value.status == 403
    assert raised.value.message == "Device limit reached"
    assert await device_count(db) == 1
    # Another account on the same plan has its own limit.
    other = await new_account(db, plan="solo")
    await device_service.register(db, SECRET, other.id, "theirs", 0)
    assert await device_count(db) == 2


async def test_a_nul_in_the_name_is_a_bad_request_and_writes_nothing(
        db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    with pytest.raises(BadRequest, match="NUL"):
        await device_service.register(db, SECRET, acc.id, "bad\x00name", 0)
    assert await device_count(db) == 0


# --- keys.create ------------------------------------------------------------


async def test_a_key_with_no_scopes_may_send_messages_only(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    key, secret = await key_service.create(db, SECRET, acc.id, "ci", [], None, None)
    assert key.scopes == ["messages:send"]
    assert (key.account_id, key.name, key.rate_limit, key.expires_at, key.revoked) == (
        acc.id, "ci", None, None, False)
    assert keys.parse_prefix(keys.KEY_KIND, secret) == key.prefix
    stored = await store.key_by_prefix(db, key.prefix)
    assert stored is not None and stored.id == key.id
    assert stored.scopes == ["messages:send"]
    assert stored.secret_hash == keys.digest(SECRET, secret)


async def test_scopes_given_are_stored_once_each(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    key, _ = await key_service.create(db, SECRET, acc.id, "ops",
                                      ["messages:read", "keys:write", "messages:read"], 5, None)
    assert sorted(key.scopes) == ["keys:write", "messages:read"] and key.rate_limit == 5


async def test_an_unknown_scope_is_a_bad_request_naming_it(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    with pytest.raises(BadRequest) as raised:
        await key_service.create(db, SECRET, acc.id, "x", ["messages:send", "messages:burn"],
                                 None, None)
    assert "messages:burn" in raised.value.message
    assert await key_count(db) == 0


async def test_expires_in_sets_the_expiry_from_now(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    before = dt.datetime.now(dt.UTC)
    key, _ = await key_service.create(db, SECRET, acc.id, "short", [], None, 3600)
    after = dt.datetime.now(dt.UTC)
    assert key.expires_at is not None
    assert before + dt.timedelta(seconds=3600) <= key.expires_at
    assert key.expires_at <= after + dt.timedelta(seconds=3600)


# --- keys.rotate ------------------------------------------------------------


async def test_rotate_keeps_the_key_and_changes_its_secret(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    old, old_secret = await key_service.create(db, SECRET, acc.id, "rot", ["messages:read"], 7,
                                               600)
    rotated = await key_service.rotate(db, SECRET, old.id, acc.id)
    assert rotated is not None
    new, new_secret = rotated
    assert (new.id, new.name, new.scopes, new.rate_limit, new.expires_at) == (
        old.id, old.name, old.scopes, old.rate_limit, old.expires_at)
    assert new.prefix != old.prefix and new.secret_hash != old.secret_hash
    assert new_secret != old_secret
    assert keys.parse_prefix(keys.KEY_KIND, new_secret) == new.prefix
    assert new.secret_hash == keys.digest(SECRET, new_secret)
    # The old secret no longer finds the key; the new one does.
    assert await store.key_by_prefix(db, old.prefix) is None
    found = await store.key_by_prefix(db, new.prefix)
    assert found is not None and found.id == old.id
    assert found.secret_hash == keys.digest(SECRET, new_secret)


async def test_rotate_without_an_account_is_the_operators(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    old, _ = await key_service.create(db, SECRET, acc.id, "op", [], None, None)
    rotated = await key_service.rotate(db, SECRET, old.id)
    assert rotated is not None and rotated.key.id == old.id
    assert rotated.key.prefix != old.prefix


async def test_rotate_another_accounts_key_finds_nothing_and_changes_nothing(
        db: asyncpg.Connection) -> None:
    owner, intruder = await new_account(db), await new_account(db)
    key, secret = await key_service.create(db, SECRET, owner.id, "mine", [], None, None)
    assert await key_service.rotate(db, SECRET, key.id, intruder.id) is None
    assert await key_service.rotate(db, SECRET, uuid.uuid4(), owner.id) is None
    stored = await store.key_by_prefix(db, key.prefix)
    assert stored is not None and stored.secret_hash == keys.digest(SECRET, secret)
