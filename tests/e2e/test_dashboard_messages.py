"""The dashboard's messages over real HTTP (CONTRACT section 11): the list
with its filters and pages, "Send a test SMS" through the send path with a
real WebSocket phone, the detail with its timeline, cancel, the live
stream, one account never seeing another's messages, CSRF."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from broker import store
from broker.settings import Settings
from tests.e2e.conftest import SECRET, Account, PhoneFactory, Server, stored_history
from tests.e2e.test_dashboard_accounts import csrf_of, sign_up

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def broker_settings(tmp_path: Any) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, pool_min=1, pool_max=10,
                    last_seen_flush_s=0.2)


async def signed_up(http: httpx.AsyncClient, db: asyncpg.Connection,
                    email: str = "ana@example.com") -> Account:
    """A dashboard session for a new account, and the account for the fixtures."""
    r = await sign_up(http, email)
    assert r.status_code == 303, r.text
    account_id = await db.fetchval("SELECT id FROM accounts WHERE email = $1", email)
    return Account(id=account_id, email=email, key="", db=db)


def live_url(page: str) -> str:
    found = re.search(r'data-live="([^"]+)"', page)
    assert found, page[:500]
    return html.unescape(found.group(1))


async def events(http: httpx.AsyncClient, url: str) -> AsyncGenerator[str, None]:
    """The `html` events of a live stream, as their data."""
    async with http.stream("GET", url) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        buf = ""
        async for chunk in r.aiter_text():
            buf += chunk
            while "\n\n" in buf:
                event, buf = buf.split("\n\n", 1)
                lines = event.splitlines()
                if "event: html" in lines:
                    yield "\n".join(line[6:] for line in lines if line.startswith("data: "))


async def until(stream: AsyncIterator[str], predicate: Callable[[str], bool],
                timeout: float = 6.0) -> list[str]:
    """The events up to and including the first that `predicate` accepts."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        async for data in stream:
            seen.append(data)
            if predicate(data):
                return seen
    raise AssertionError(f"the stream ended first: {seen}")


def row_status(page: str, mid: str) -> str:
    found = re.search(rf'<tr id="message-{mid}".*?data-status="(\w+)"', page, re.S)
    assert found, page[:2000]
    return found.group(1)


async def insert(db: asyncpg.Connection, account: Account, *, recipient: str = "+16502530000",
                 status: str = "queued", device: str | None = None, body: str = "hello",
                 created_at: dt.datetime | None = None) -> str:
    mid = uuid.uuid4()
    assert await store.insert_message(
        db, mid, account.id, uuid.UUID(device) if device else None, recipient, body, status,
        None, created_at or dt.datetime.now(dt.UTC)) is store.Inserted.WRITTEN
    return str(mid)


async def send_form(http: httpx.AsyncClient, recipient: str, text: str) -> httpx.Response:
    page = await http.get("/dashboard/messages")
    return await http.post("/dashboard/messages/new", data={
        "csrf": csrf_of(page.text), "recipient": recipient, "message": text})


async def test_a_test_sms_from_the_form_goes_to_the_phone_and_delivers_live(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account = await signed_up(http, db)
    device = await account.make_device("Pixel 8")
    p = await phone(device)
    r = await send_form(http, "+1 650 253 0000", "Dashboard test")
    assert r.status_code == 303
    mid = r.headers["location"].rsplit("/", 1)[1]
    assert r.headers["location"] == f"/dashboard/messages/{mid}"
    job = await p.expect("send")
    assert (job["id"], job["recipient"], job["message"]) == (mid, "+16502530000",
                                                             "Dashboard test")
    detail = await http.get(f"/dashboard/messages/{mid}")
    assert detail.status_code == 200 and 'id="message-timeline"' in detail.text
    assert re.findall(r'<li data-status="(\w+)"', detail.text) == ["queued", "dispatching"]
    assert "Pixel 8" in detail.text and 'id="cancel-message"' in detail.text
    # The list's live stream carries the row as it moves; so does the detail's.
    listing = await http.get("/dashboard/messages")
    assert row_status(listing.text, mid) == "dispatching"
    rows = events(http, live_url(listing.text))
    panel = events(http, live_url(detail.text))
    await p.ask({"type": "ack", "id": mid})
    await p.ask({"type": "status", "id": mid, "status": "sent"})
    await p.ask({"type": "status", "id": mid, "status": "delivered"})
    seen = await until(rows, lambda d: f'id="message-{mid}"' in d and "delivered" in d)
    assert 'data-into' not in seen[-1]  # on the page already: replaced, not added
    seen = await until(panel, lambda d: 'data-status="delivered"' in d)
    assert seen[-1].startswith('<section id="message-detail"')
    await rows.aclose()
    await panel.aclose()
    assert await stored_history(db, mid) == ["queued", "dispatching", "sending", "sent",
                                             "delivered"]
    detail = await http.get(f"/dashboard/messages/{mid}")
    assert re.findall(r'<li data-status="(\w+)"', detail.text) == [
        "queued", "dispatching", "sending", "sent", "delivered"]
    assert 'id="cancel-message"' not in detail.text
    used = await db.fetchval("SELECT sum(used) FROM account_usage WHERE account_id = $1",
                             account.id)
    assert used == 1  # counted against the month, as an API send


async def test_the_send_form_shows_why_a_send_was_refused(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await signed_up(http, db)
    r = await send_form(http, "+16502530000", "no phone")
    assert r.status_code == 400 and "No eligible device available" in r.text
    assert 'value="no phone"' in r.text  # what was typed stays
    r = await send_form(http, "12", "bad number")
    assert r.status_code == 400 and "Invalid phone number" in r.text
    r = await send_form(http, "+16502530000", "x" * 1601)
    assert r.status_code == 400 and "1-1600 characters" in r.text
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    page = await http.get("/dashboard/messages/new")
    assert page.status_code == 200 and 'for="send-recipient"' in page.text


async def test_over_the_monthly_quota_the_form_says_so(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account = await signed_up(http, db)
    await db.execute("INSERT INTO plans (name, monthly_messages, max_devices) VALUES"
                     " ('tiny', 1, 1)")
    await db.execute("UPDATE accounts SET plan = 'tiny' WHERE id = $1", account.id)
    await phone(await account.make_device())
    assert (await send_form(http, "+16502530000", "one")).status_code == 303
    r = await send_form(http, "+16502530000", "two")
    assert r.status_code == 403 and "Monthly message quota exceeded" in r.text


async def test_filters_and_pages(server: Server, http: httpx.AsyncClient,
                                 db: asyncpg.Connection) -> None:
    account = await signed_up(http, db)
    one, two = await account.make_device("One"), await account.make_device("Two")
    old = dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC)
    first = await insert(db, account, device=one.id, status="delivered", created_at=old)
    uk = await insert(db, account, device=two.id, recipient="+447911123456", status="failed")
    await db.execute("UPDATE messages SET error = 'no signal' WHERE id = $1", uuid.UUID(uk))
    bulk = [await insert(db, account, device=one.id, body=f"bulk {i}") for i in range(55)]

    async def shown(**query: str) -> list[str]:
        r = await http.get("/dashboard/messages", params=query)
        assert r.status_code == 200, r.text
        return re.findall(r'<tr id="message-([0-9a-f-]+)"', r.text)

    page = await http.get("/dashboard/messages")
    assert re.findall(r'<tr id="message-([0-9a-f-]+)"', page.text) == bulk[::-1][:50]
    link = re.search(r'href="([^"]+)" id="older-messages"', page.text)
    assert link is not None
    older = html.unescape(link.group(1))
    rest = await http.get(older)
    assert re.findall(r'<tr id="message-([0-9a-f-]+)"', rest.text) == [*bulk[:5][::-1], uk,
                                                                        first]
    assert "no signal" in rest.text and 'id="older-messages"' not in rest.text
    assert await shown(status="failed") == [uk]
    assert await shown(recipient="+44 7911 123456") == [uk]
    assert await shown(device=two.id) == [uk]
    assert await shown(until="2026-01-10") == [first]  # through that UTC day
    assert await shown(since="2026-01-11", status="delivered") == []
    assert len(await shown(since="2026-01-11")) == 50
    r = await http.get("/dashboard/messages", params={"recipient": "nope"})
    assert r.status_code == 400 and "Invalid phone number" in r.text
    r = await http.get("/dashboard/messages", params={"status": "lost"})
    assert r.status_code == 400 and "status must be one of" in r.text


async def test_the_live_list_adds_only_new_rows_that_match(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    account = await signed_up(http, db)
    page = await http.get("/dashboard/messages", params={"recipient": "+447911123456"})
    stream = events(http, live_url(page.text))
    other = await insert(db, account, recipient="+16502530000")
    match = await insert(db, account, recipient="+447911123456")
    server.broker.wake.poke(account.id)
    seen = await until(stream, lambda d: f'id="message-{match}"' in d)
    assert 'data-into="messages-body"' in seen[-1]
    assert not any(other in d for d in seen)
    await stream.aclose()
    # On an older page (a cursor) new rows are not put at the top.
    for _ in range(51):
        await insert(db, account)
    older = await http.get("/dashboard/messages", params={"cursor": "3"})
    assert "top=0" in live_url(older.text)


async def test_cancel_and_too_late_to_cancel(server: Server, http: httpx.AsyncClient,
                                             db: asyncpg.Connection) -> None:
    account = await signed_up(http, db)
    mid = await insert(db, account)  # waiting, no phone
    page = await http.get(f"/dashboard/messages/{mid}")
    r = await http.post(f"/dashboard/messages/{mid}/cancel", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/dashboard/messages/{mid}"
    page = await http.get(f"/dashboard/messages/{mid}")
    assert 'id="message-status" data-status="failed"' in page.text and "cancelled" in page.text
    assert await stored_history(db, mid) == ["queued", "failed"]
    r = await http.post(f"/dashboard/messages/{mid}/cancel", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 409 and "Message can no longer be cancelled" in r.text
    assert 'id="cancel-error"' in r.text and 'id="message-timeline"' in r.text


async def test_another_accounts_messages_are_not_found(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    ana = await signed_up(http, db)
    mid = await insert(db, ana)
    async with httpx.AsyncClient(base_url=server.url) as eve:
        await signed_up(eve, db, "eve@example.com")
        page = await eve.get("/dashboard/messages")
        assert mid not in page.text
        assert (await eve.get(f"/dashboard/messages/{mid}")).status_code == 404
        assert (await eve.get("/dashboard/messages/not-an-id")).status_code == 404
        r = await eve.post(f"/dashboard/messages/{mid}/cancel",
                           data={"csrf": csrf_of(page.text)})
        assert r.status_code == 404 and "Message not found" in r.text
        assert await stored_history(db, mid) == ["queued"]
        # Eve's live detail of Ana's id says nothing; her list's feed, nothing of Ana's.
        stream = events(eve, f"/dashboard/live?view=message&id={mid}")
        with pytest.raises(TimeoutError):
            await until(stream, lambda d: True, timeout=0.5)
        await stream.aclose()
        stream = events(eve, "/dashboard/live?view=messages&lo=0&hi=0&top=1&t=1")
        with pytest.raises(TimeoutError):
            await until(stream, lambda d: True, timeout=0.5)
        await stream.aclose()


async def test_posts_without_their_csrf_token_are_refused(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    account = await signed_up(http, db)
    await phone(await account.make_device())
    r = await http.post("/dashboard/messages/new", data={"recipient": "+16502530000",
                                                         "message": "forged"})
    assert r.status_code == 403
    mid = await insert(db, account)
    r = await http.post(f"/dashboard/messages/{mid}/cancel", data={"csrf": "forged"})
    assert r.status_code == 403
    # Not cancelled (the connected phone may have been handed it meanwhile).
    assert "failed" not in await stored_history(db, mid)
    assert await db.fetchval("SELECT count(*) FROM messages") == 1


class Counting:
    """The broker's pool, counting the statements made through it."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.queries: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.pool, name)
        if name in ("fetch", "fetchrow", "fetchval", "execute"):
            async def counted(query: str, *args: Any, **kw: Any) -> Any:
                self.queries.append(query)
                return await attr(query, *args, **kw)
            return counted
        return attr


async def test_the_list_is_one_query_per_table(server: Server, http: httpx.AsyncClient,
                                               db: asyncpg.Connection) -> None:
    """No query per row: device names come joined (the session's lookup,
    the devices for the filter, the page)."""
    account = await signed_up(http, db)
    devices = [await account.make_device(f"Phone {i}") for i in range(3)]
    for i in range(60):
        await insert(db, account, device=devices[i % 3].id)
    await http.get("/dashboard/messages")  # the session's touch out of the way
    counting = Counting(server.broker.pool)
    server.broker.pool = counting  # type: ignore[assignment]
    try:
        page = await http.get("/dashboard/messages")
        mid = re.findall(r'<tr id="message-([0-9a-f-]+)"', page.text)[0]
        listed = list(counting.queries)
        counting.queries.clear()
        await http.get(f"/dashboard/messages/{mid}")
        detail = list(counting.queries)
    finally:
        server.broker.pool = counting.pool
    assert page.text.count("Phone ") >= 50
    assert len(listed) == 3, listed
    assert len(detail) == 3, detail  # the session, the message, its history
