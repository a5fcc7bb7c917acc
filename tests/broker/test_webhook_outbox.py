"""The outbox written by the database itself (migration 0006): every
history row of a message fires one event per subscribed endpoint, in the
transaction that wrote the row."""

from __future__ import annotations

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
    print(rows[0]["data"])
