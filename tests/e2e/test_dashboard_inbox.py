"""The dashboard's inbox over real HTTP (CONTRACT section 11): SMS a real
WebSocket phone reports by its `incoming` frame, listed newest first,
filtered and paged as GET /inbox, new ones carried by the live stream; one
account never sees another's."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import asyncpg
import httpx
import pytest

from broker import store
from tests.e2e.conftest import PhoneFactory, Server
from tests.e2e.test_dashboard_messages import broker_settings, events, live_url, signed_up, until

pytestmark = pytest.mark.timeout(30)
__all__ = ["broker_settings"]  # the fixture, as the messages page's tests set it


def incoming(phone_id: str, sender: str = "+212600000001", text: str = "Hello") -> dict[str, str]:
    return {"type": "incoming", "id": phone_id, "sender": sender, "message": text,
            "receivedAt": "2026-12-01T10:15:30.250+01:00"}


def shown(page: str) -> list[str]:
    return re.findall(r'<tr id="sms-([0-9a-f-]+)"', page)


async def test_an_sms_a_phone_reports_is_listed_and_arrives_live(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account = await signed_up(http, db)
    device = await account.make_device("Pixel 8")
    p = await phone(device)
    assert (await p.ask(incoming("sms-1", text="First")))["status"] == "received"
    page = await http.get("/dashboard/inbox")
    assert page.status_code == 200
    [first] = shown(page.text)
    assert "First" in page.text and "Pixel 8" in page.text and "+212600000001" in page.text
    stream = events(http, live_url(page.text))
    assert (await p.ask(incoming("sms-2", sender="MyBank", text="Second <b>")))[
        "status"] == "received"
    seen = await until(stream, lambda d: "Second" in d)
    assert 'data-into="inbox-body"' in seen[-1] and "Second &lt;b&gt;" in seen[-1]
    await stream.aclose()
    page = await http.get("/dashboard/inbox")
    assert len(shown(page.text)) == 2 and shown(page.text)[1] == first


async def test_filters_pages_and_isolation(server: Server, http: httpx.AsyncClient,
                                           db: asyncpg.Connection) -> None:
    account = await signed_up(http, db)
    one, two = await account.make_device("One"), await account.make_device("Two")
    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    for i in range(52):
        await store.insert_inbound(db, uuid.UUID(one.id), store.WEBSOCKET, f"a{i}",
                                   "Bank" if i == 0 else "+15550001", f"sms {i}", None, at)
    await store.insert_inbound(db, uuid.UUID(two.id), store.WEBSOCKET, "b", "+15550002", "two",
                               None, at)
    page = await http.get("/dashboard/inbox")
    assert len(shown(page.text)) == 50 and 'id="older-sms"' in page.text
    older = re.search(r'href="([^"]+)" id="older-sms"', page.text)
    assert older is not None
    rest = await http.get(older.group(1).replace("&amp;", "&"))
    assert len(shown(rest.text)) == 3 and "sms 0" in rest.text
    by_device = await http.get("/dashboard/inbox", params={"device": two.id})
    assert len(shown(by_device.text)) == 1 and ">two<" in by_device.text
    by_sender = await http.get("/dashboard/inbox", params={"sender": "Bank"})
    assert len(shown(by_sender.text)) == 1 and "sms 0" in by_sender.text
    bad = await http.get("/dashboard/inbox", params={"device": "nope"})
    assert bad.status_code == 400 and "device must be an id" in bad.text
    async with httpx.AsyncClient(base_url=server.url) as eve:
        await signed_up(eve, db, "eve@example.com")
        theirs = await eve.get("/dashboard/inbox")
        assert shown(theirs.text) == [] and 'id="inbox-empty"' in theirs.text
        stream = events(eve, "/dashboard/live?view=inbox&after=0")
        with pytest.raises(TimeoutError):
            await until(stream, lambda d: True, timeout=0.5)
        await stream.aclose()
