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


async def test_sent_and_delivered_written_in_one_statement_both_fire(
        db: asyncpg.Connection) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    await endpoint(db, acc.id, ["message.sent", "message.delivered"])
    mid = await new_message(db, acc, dev, status="dispatching")
    await db.execute("INSERT INTO message_history (message_id, status, device_id)"
                     " SELECT $1, s, $2 FROM unnest(ARRAY['delivered', 'sent']) AS s",
                     mid, dev.id)
    types = [r["type"] for r in await db.fetch("SELECT type FROM webhook_events ORDER BY seq")]
    assert types == ["message.sent", "message.delivered"]


async def test_disabling_an_endpoint_fails_its_owed_events_as_a_numbered_attempt(
        db: asyncpg.Connection) -> None:
    from broker.store import webhooks as outbox

    acc = await new_account(db)
    dev = await new_device(db, acc)
    wid = await endpoint(db, acc.id, ["message.queued"])
    await new_message(db, acc, dev)
    [claimed] = await outbox.claim_due(db, "node-a", {}, 8, 8, 30)
    await outbox.update_webhook(db, acc.id, wid, None, None, None, False)
    # The attempt under way ends after the disable: its outcome is still
    # recorded, numbered after the disable's row (it once collided with it).
    import datetime as dt
    now = dt.datetime.now(dt.UTC)
    await outbox.record(db, [outbox.Outcome(seq=claimed.seq, webhook_id=wid, ok=True,
                                            status_code=200, error=None, at=now, next_at=None,
                                            claimed=claimed.attempts)], 86400)
    rows = await db.fetch("SELECT attempt, error, status_code FROM webhook_attempts"
                          " ORDER BY attempt")
    assert [(r["attempt"], r["error"], r["status_code"]) for r in rows] == \
        [(1, "endpoint disabled", None), (2, None, 200)]
    assert await db.fetchval("SELECT state FROM webhook_events") == "failed"


async def test_a_node_that_starts_again_releases_what_it_had_claimed(
        db: asyncpg.Connection) -> None:
    from broker.store import webhooks as outbox

    acc = await new_account(db)
    dev = await new_device(db, acc)
    await endpoint(db, acc.id, ["message.queued"])
    for _ in range(2):
        await new_message(db, acc, dev)
    [mine] = await outbox.claim_due(db, "node-a", {}, 8, 1, 300)
    [theirs] = await outbox.claim_due(db, "node-b", {}, 8, 1, 300)
    assert await outbox.claim_due(db, "node-a", {}, 8, 8, 300) == []  # both leased
    assert await outbox.release_node(db, "node-a") == 1
    [again] = await outbox.claim_due(db, "node-a", {}, 8, 8, 300)
    assert again.seq == mine.seq and again.attempts == 1 and again.id == mine.id
    assert theirs.seq != mine.seq
