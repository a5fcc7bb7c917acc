"""SMS Gateway phones' jobs end to end (contract section 8; SMSGATE.md
sections 4.6-4.7, 5, 6.7-6.11 and the MSG and SSE cases of section 11)."""

from __future__ import annotations

import re

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import Account, Stored, send_sms, stored
from tests.e2e.smsgate_app import register

pytestmark = pytest.mark.timeout(30)
DATE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?(Z|[+-]\d\d:\d\d)$")


async def test_smoke_send_list_report(http: httpx.AsyncClient, account: Account,
                                      db: asyncpg.Connection) -> None:
    app = await register(http, account.key)
    stream = await app.open_events()
    first = [await stream.next(), await stream.next()]
    assert [e.name for e in first] == ["WebhooksUpdated", "SettingsUpdated"]
    r = await send_sms(http, account.key)
    assert r.status_code == 201, r.text
    mid = r.json()["data"]["id"]
    event = await stream.next()
    assert event.name == "MessageEnqueued"
    items = await app.list()
    assert [i["id"] for i in items] == [mid]
    item = items[0]
    assert item["textMessage"] == {"text": "Your code is 4829"} and item["message"] == "Your code is 4829"
    assert item["phoneNumbers"] == ["+16502530000"] and item["state"] == "Pending"
    assert DATE_RE.match(item["createdAt"]), item
    await app.report(mid, "Processed")
    assert await stored(db, mid) == Stored("sending", None, app.id)
    assert await app.list() == []
    await app.report(mid, "Sent")
    await app.report(mid, "Delivered")
    assert await stored(db, mid) == Stored("delivered", None, app.id)
    await app.close_events()
