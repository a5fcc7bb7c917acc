"""The outbox written by the database itself (migration 0006): every
history row of a message fires one event per subscribed endpoint, in the
transaction that wrote the row."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from tests.conftest import new_account, new_device, new_message

pytestmark = pytest.mark.timeout(30)


async def endpoint(db: asyncpg.Connection, account_id: uuid.UUID, events: list[str],
                   enabled: bool = True) -> uuid.UUID:
    wid = uuid.uuid4()
    await db.execute("INSERT INTO webhooks (id, account_id, url, events, secret, enabled)"
                     " VALUES ($1, $2, 'https://example.com/h', $3, 'whsec_x', $4)",
                     wid, account_id, events, enabled)
    return wid


async def test_the_send_statement_writes_queued_and_dispatching_events(
        db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc, "Pixel")
    wid = await endpoint(db, acc.id, ["*"])
    mid = await new_message(db, acc, dev, status="dispatching")
    rows = await db.fetch("SELECT type, message_id, data, webhook_id FROM webhook_events"
                          " ORDER BY seq")
    assert [r["type"] for r in rows] == ["message.queued", "message.dispatching"]
    assert all(r["message_id"] == mid and r["webhook_id"] == wid for r in rows)


async def test_a_rolled_back_change_leaves_no_event_and_a_committed_one_its_event(
        db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    await endpoint(db, acc.id, ["*"])
    mid = await new_message(db, acc, dev, status="dispatching")
    before = await db.fetchval("SELECT count(*) FROM webhook_events")
    tr = db.transaction()
    await tr.start()
    await db.execute("UPDATE messages SET status = 'sending' WHERE id = $1", mid)
    await db.execute("INSERT INTO message_history (message_id, status, device_id)"
                     " VALUES ($1, 'sending', $2)", mid, dev.id)
    inside = await db.fetchval("SELECT count(*) FROM webhook_events")
    await tr.rollback()
    assert inside == before + 1, "the event is written inside the writing transaction"
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == before


async def test_each_endpoint_gets_the_types_it_subscribed_to_and_disabled_ones_none(
        db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    other = await new_account(db)
    dev = await new_device(db, acc)
    every = await endpoint(db, acc.id, ["*"])
    failures = await endpoint(db, acc.id, ["message.failed", "message.dispatching"])
    await endpoint(db, acc.id, ["*"], enabled=False)
    await endpoint(db, other.id, ["*"])
    mid = await new_message(db, acc, dev, status="dispatching")
    rows = await db.fetch("SELECT webhook_id, type FROM webhook_events ORDER BY seq")
    got = [(r["webhook_id"], r["type"]) for r in rows]
    assert sorted(got) == sorted([(every, "message.queued"), (every, "message.dispatching"),
                                  (failures, "message.dispatching")])
    assert all(r["message_id"] == mid for r in await db.fetch(
        "SELECT message_id FROM webhook_events"))


async def test_a_sent_after_delivered_fires_no_event(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    await endpoint(db, acc.id, ["message.sent", "message.delivered"])
    mid = await new_message(db, acc, dev, status="dispatching")
    for status in ("delivered", "sent"):
        await db.execute("INSERT INTO message_history (message_id, status, device_id)"
                         " VALUES ($1, $2, $3)", mid, status, dev.id)
    types = [r["type"] for r in await db.fetch("SELECT type FROM webhook_events ORDER BY seq")]
    assert types == ["message.delivered"]


async def test_an_event_carries_the_row_s_device_and_error(db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc, "Galaxy")
    await endpoint(db, acc.id, ["message.failed"])
    mid = await new_message(db, acc, dev, status="dispatching")
    await db.execute("INSERT INTO message_history (message_id, status, device_id, error)"
                     " VALUES ($1, 'failed', $2, 'expired')", mid, dev.id)
    data = json.loads(await db.fetchval("SELECT data FROM webhook_events"))
    assert data["status"] == "failed" and data["error"] == "expired"
    assert data["device"] == {"id": str(dev.id), "deviceName": "Galaxy"}
    assert data["recipient"] == "+16502530000" and data["message"] == "hello"
