"""The dashboard's overview over real HTTP (CONTRACT section 11): the
month's usage against the plan as GET /account counts it, phones online
and registered, the recent messages (live), failing webhooks, and where to
start without a phone or a key."""

from __future__ import annotations

import re
import uuid

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import PhoneFactory, Server
from tests.e2e.test_dashboard_messages import (
    broker_settings,
    events,
    insert,
    live_url,
    send_form,
    signed_up,
    until,
)

pytestmark = pytest.mark.timeout(30)
__all__ = ["broker_settings"]


def number(page: str, element_id: str) -> int:
    found = re.search(rf'id="{element_id}">([\d,]+)<', page)  # 1,000,000 as the page writes it
    assert found, element_id
    return int(found.group(1).replace(",", ""))


async def test_the_overview_counts_what_the_api_counts(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account = await signed_up(http, db)
    page = await http.get("/dashboard")
    assert 'id="add-phone"' in page.text and 'id="create-key"' in page.text
    assert number(page.text, "phones-registered") == 0
    online, _offline = await account.make_device("Online"), await account.make_device("Away")
    account.key = await account.make_key(["messages:read"])
    p = await phone(online)
    for text in ("one", "two"):
        assert (await send_form(http, "+16502530000", text)).status_code == 303
        await p.expect("send")
    api = (await http.get("/account", headers=account.headers)).json()["data"]
    page = await http.get("/dashboard")
    assert 'id="add-phone"' not in page.text and 'id="create-key"' not in page.text
    assert number(page.text, "usage-messages") == api["usage"]["messages"] == 2
    assert number(page.text, "usage-limit") == api["plan"]["monthlyMessages"]
    assert number(page.text, "phones-online") == 1
    assert number(page.text, "phones-registered") == api["devices"]["active"] == 2
    assert number(page.text, "webhooks-failing") == 0
    # Recent: the five newest, as the messages page shows its rows.
    for _ in range(5):
        await insert(db, account)
    page = await http.get("/dashboard")
    assert len(re.findall(r'<tr id="message-', page.text)) == 5
    # Live: a new message at the top, the cards again when they change.
    stream = events(http, live_url(page.text))
    mid = await insert(db, account)
    await p.close()
    server.broker.wake.poke(account.id)
    await until(stream, lambda d: f'id="message-{mid}"' in d and 'data-into="recent-body"' in d)
    seen = await until(stream, lambda d: 'id="overview-cards"' in d
                       and 'id="phones-online">0<' in d)
    await stream.aclose()
    assert 'id="usage-messages">2<' in seen[-1]  # rows written directly take no quota


async def test_failing_webhooks_are_listed(server: Server, http: httpx.AsyncClient,
                                           db: asyncpg.Connection) -> None:
    account = await signed_up(http, db)
    for url, enabled, failing in (("https://ok.example.com/h", True, False),
                                  ("https://down.example.com/h", True, True),
                                  ("https://off.example.com/h", False, False)):
        await db.execute(
            "INSERT INTO webhooks (id, account_id, url, events, secret, enabled,"
            " disabled_reason, failing_since) VALUES ($1, $2, $3, ARRAY['*'], 'whsec_x', $4,"
            " CASE WHEN NOT $4 THEN 'the endpoint answered 410 Gone' END,"
            " CASE WHEN $5 THEN now() END)", uuid.uuid4(), account.id, url, enabled, failing)
    page = await http.get("/dashboard")
    assert number(page.text, "webhooks-failing") == 2
    assert "down.example.com" in page.text and "off.example.com" in page.text
    assert "ok.example.com" not in page.text and "410 Gone" in page.text
    async with httpx.AsyncClient(base_url=server.url) as eve:
        await signed_up(eve, db, "eve@example.com")
        theirs = await eve.get("/dashboard")
        assert number(theirs.text, "webhooks-failing") == 0
        assert number(theirs.text, "usage-messages") == 0
        assert "down.example.com" not in theirs.text
