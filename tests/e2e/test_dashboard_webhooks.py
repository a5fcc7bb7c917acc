"""The dashboard's webhooks over real HTTP (CONTRACT section 11): add one
(its secret shown once), the deliveries log (paginated, live), a test event,
redeliver, disable / enable, rotate the secret, delete, recover; the SSRF
refusal on the form; against a real receiver (tests/e2e/webhook_receiver.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import re
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from broker.settings import Settings
from tests.e2e.conftest import SECRET, Server, start_server, stop_server, wait_for
from tests.e2e.test_dashboard_accounts import csrf_of, sign_up
from tests.e2e.webhook_receiver import Receiver, Reply

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, pool_min=1, pool_max=10,
                    webhook_allow_private=True, webhook_retries_s=(0.05,), webhook_poll_s=0.1,
                    webhook_timeout_s=2.0)



def secret_of(page: str) -> str:
    found = re.search(r'<code id="new-webhook-secret">([^<]+)</code>', page)
    assert found, page[:2000]
    return found.group(1)


async def add(http: httpx.AsyncClient, url: str, events: list[str] | None = None,
              **fields: str) -> httpx.Response:
    page = await http.get("/dashboard/webhooks")
    assert page.status_code == 200
    return await http.post("/dashboard/webhooks", data={
        "csrf": csrf_of(page.text), "url": url, "events[]": events or ["*"], **fields})


async def added(http: httpx.AsyncClient, db: asyncpg.Connection,
                receiver: Receiver) -> uuid.UUID:
    r = await add(http, receiver.url)
    assert r.status_code == 200, r.text
    receiver.secrets.append(secret_of(r.text))
    webhook_id: uuid.UUID = await db.fetchval("SELECT id FROM webhooks ORDER BY created_at DESC")
    return webhook_id


async def act(http: httpx.AsyncClient, webhook_id: uuid.UUID, action: str,
              **fields: str) -> httpx.Response:
    page = await http.get(f"/dashboard/webhooks/{webhook_id}")
    return await http.post(f"/dashboard/webhooks/{webhook_id}/{action}",
                           data={"csrf": csrf_of(page.text), **fields})


async def attempts(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM webhook_attempts"))


async def test_add_a_webhook_shows_its_secret_once(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http)
    r = await add(http, receiver.url, ["message.delivered", "message.failed"],
                  description="orders <shop>")
    assert r.status_code == 200
    secret = secret_of(r.text)
    assert secret.startswith("whsec_") and 'data-copy="new-webhook-secret"' in r.text
    row = await db.fetchrow("SELECT * FROM webhooks")
    assert row["url"] == receiver.url and row["events"] == ["message.delivered", "message.failed"]
    assert row["description"] == "orders <shop>" and row["enabled"]
    listed = await http.get("/dashboard/webhooks")
    assert secret not in listed.text
    assert f'href="/dashboard/webhooks/{row["id"]}"' in listed.text
    assert "orders &lt;shop&gt;" in listed.text and "<shop>" not in listed.text
    assert "<code>message.failed</code>" in listed.text and "status enabled" in listed.text
    r = await add(http, receiver.url, ["*"])
    assert "All events" in (await http.get("/dashboard/webhooks")).text


WRONG_FORMS = [
    ([], {}, "Choose at least one event"),
    (["message.lost"], {}, "unknown event type(s): message.lost"),
    (["*"], {"description": "x" * 201}, "length <= 200"),
    (["*"], {"url": ""}, "Give the URL"),
    (["*"], {"url": "ftp://example.com/x"}, "url"),
]


async def test_a_wrong_form_is_named_on_it(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http)
    page = await http.get("/dashboard/webhooks")
    for events, fields, complaint in WRONG_FORMS:
        data: dict[str, str | list[str]] = {"csrf": csrf_of(page.text), "url": receiver.url,
                                            "events[]": events, **fields}
        r = await http.post("/dashboard/webhooks", data=data)
        assert r.status_code == 400, complaint
        assert complaint in html.unescape(r.text) and 'id="webhook-error"' in r.text
        assert 'id="add-webhook"' in r.text
    assert await db.fetchval("SELECT count(*) FROM webhooks") == 0


async def test_a_private_url_is_refused_on_the_form(
        db: asyncpg.Connection, database_url: str, broker_settings: Settings) -> None:
    guarded = await start_server(dataclasses.replace(broker_settings,
                                                     webhook_allow_private=False), database_url)
    try:
        async with httpx.AsyncClient(base_url=guarded.url) as http:
            await sign_up(http)
            r = await add(http, "http://127.0.0.1:9/hook")
            assert r.status_code == 400
            assert "must not point to a loopback, private or link-local address" in r.text
            assert 'value="http://127.0.0.1:9/hook"' in r.text  # kept to correct
    finally:
        await stop_server(guarded)
    assert await db.fetchval("SELECT count(*) FROM webhooks") == 0


async def test_a_test_event_and_its_redelivery_are_in_the_log(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http)
    webhook_id = await added(http, db, receiver)
    r = await act(http, webhook_id, "test")
    assert r.status_code == 303 and r.headers["location"].endswith("?done=test")
    await receiver.wait(lambda: len(receiver.events("webhook.test")) == 1)
    assert receiver.requests[0].verified

    async def attempted(n: int) -> bool:
        return await attempts(db) == n
    await wait_for(lambda: attempted(1), what="the attempt recorded")
    page = await http.get(r.headers["location"])
    assert "Test event queued" in page.text
    event_id = receiver.requests[0].webhook_id
    assert f"<code class=\"mono\">{event_id}</code>" in page.text and ">204<" in page.text
    assert "webhook.test" in page.text

    r = await act(http, webhook_id, "redeliver", event_id=event_id)
    assert r.status_code == 303 and r.headers["location"].endswith("?done=redeliver")
    await receiver.wait(lambda: len(receiver.requests) == 2)
    assert receiver.requests[1].webhook_id == event_id
    await wait_for(lambda: attempted(2), what="the redelivery recorded")
    assert (await http.get(f"/dashboard/webhooks/{webhook_id}")).text.count(event_id) >= 4


async def test_disable_enable_and_a_redelivery_while_disabled(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http)
    webhook_id = await added(http, db, receiver)
    await act(http, webhook_id, "test")
    await receiver.wait(lambda: len(receiver.requests) == 1)
    r = await act(http, webhook_id, "disable")
    assert r.status_code == 303
    page = await http.get(r.headers["location"])
    assert "status disabled" in page.text and "Enable webhook" in page.text
    assert not await db.fetchval("SELECT enabled FROM webhooks")
    r = await act(http, webhook_id, "redeliver", event_id=receiver.requests[0].webhook_id)
    assert r.status_code == 409 and "This webhook is disabled: enable it first." in r.text
    r = await act(http, webhook_id, "enable")
    assert r.status_code == 303 and "Disable webhook" in (await http.get(
        r.headers["location"])).text
    assert await db.fetchval("SELECT enabled FROM webhooks")
    listed = await http.get("/dashboard/webhooks")
    assert "status enabled" in listed.text


async def test_a_rotated_secret_is_shown_once_and_signs_then_delete(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http)
    webhook_id = await added(http, db, receiver)
    old = receiver.secrets[0]
    r = await act(http, webhook_id, "rotate-secret")
    assert r.status_code == 200 and "New signing secret" in r.text
    new = secret_of(r.text)
    assert new != old and "previous secret still signs until" in r.text
    assert new not in (await http.get(f"/dashboard/webhooks/{webhook_id}")).text
    receiver.secrets = [new]
    await act(http, webhook_id, "test")
    await receiver.wait(lambda: len(receiver.requests) == 1)
    assert receiver.requests[0].verified

    r = await act(http, webhook_id, "delete")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/webhooks"
    assert await db.fetchval("SELECT count(*) FROM webhooks") == 0
    assert (await http.get(f"/dashboard/webhooks/{webhook_id}")).status_code == 404


async def test_recover_sends_failed_events_again(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http)
    webhook_id = await added(http, db, receiver)
    receiver.answer = lambda got: Reply(status=500)
    await act(http, webhook_id, "test")

    async def failed() -> bool:
        return await db.fetchval("SELECT state FROM webhook_events") == "failed"
    await wait_for(failed, what="the test event finally failed")
    page = await http.get(f"/dashboard/webhooks/{webhook_id}")
    assert ">500<" in page.text
    receiver.answer = lambda got: Reply()
    r = await act(http, webhook_id, "recover", since="bad time")
    assert r.status_code == 400 and "YYYY-MM-DD HH:MM" in r.text
    r = await act(http, webhook_id, "recover", since="2000-01-01T00:00")  # datetime-local
    assert r.status_code == 303 and r.headers["location"].endswith("?done=recovered&n=1")
    assert "Failed events queued again: 1." in (await http.get(r.headers["location"])).text
    await receiver.wait(lambda: len(receiver.delivered) == 1)


async def test_the_deliveries_log_pages_newest_first(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http)
    webhook_id = await added(http, db, receiver)
    page = await http.get(f"/dashboard/webhooks/{webhook_id}")
    for _ in range(23):
        await http.post(f"/dashboard/webhooks/{webhook_id}/test",
                        data={"csrf": csrf_of(page.text)})

    async def all_attempted() -> bool:
        return await attempts(db) == 23
    await wait_for(all_attempted, what="23 attempts")
    newest = [str(r["id"]) for r in await db.fetch(
        "SELECT e.id FROM webhook_attempts a JOIN webhook_events e ON e.seq = a.event_seq"
        " ORDER BY a.at DESC, a.event_seq DESC")]
    first = await http.get(f"/dashboard/webhooks/{webhook_id}")
    shown = re.findall(r'<tr id="delivery-([0-9a-f-]{36})-1">', first.text)
    assert shown == newest[:20]
    older = re.search(r'href="(/dashboard/webhooks/[^"]+\?before=\d+)" id="older-deliveries"',
                      first.text)
    assert older
    second = await http.get(older.group(1))
    assert re.findall(r'<tr id="delivery-([0-9a-f-]{36})-1">', second.text) == newest[20:]
    assert 'id="older-deliveries"' not in second.text and "data-live" not in second.text
    assert (await http.get(f"/dashboard/webhooks/{webhook_id}?before=x")).status_code == 400


async def test_the_log_updates_live(server: Server, http: httpx.AsyncClient,
                                    db: asyncpg.Connection, receiver: Receiver) -> None:
    await sign_up(http)
    webhook_id = await added(http, db, receiver)
    page = await http.get(f"/dashboard/webhooks/{webhook_id}")
    live = re.search(r'data-live="([^"]+)"', page.text)
    assert live
    async with http.stream("GET", html.unescape(live.group(1))) as stream:
        lines = stream.aiter_lines()
        assert await anext(lines) == "retry: 2000"
        await http.post(f"/dashboard/webhooks/{webhook_id}/test",
                        data={"csrf": csrf_of(page.text)})

        async def next_event() -> str:
            data = []
            async for line in lines:
                if line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    return "\n".join(data)
            raise AssertionError("the stream ended")
        seen: list[str] = []
        while not any('id="deliveries"' in s and "webhook.test" in s for s in seen):
            seen.append(await asyncio.wait_for(next_event(), 5))
        assert any(s.startswith('<p id="webhook-state">') for s in seen)
        assert csrf_of(seen[-1])  # its Redeliver form works


async def test_another_accounts_webhook_is_not_found(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    await sign_up(http, "bob@example.com")
    bobs = await added(http, db, receiver)
    await act(http, bobs, "test")
    await receiver.wait(lambda: len(receiver.requests) == 1)
    bobs_event = receiver.requests[0].webhook_id
    http.cookies.clear()
    await sign_up(http, "ana@example.com")
    assert receiver.url not in (await http.get("/dashboard/webhooks")).text
    assert (await http.get(f"/dashboard/webhooks/{bobs}")).status_code == 404
    assert (await http.get("/dashboard/webhooks/nope")).status_code == 404
    csrf = csrf_of((await http.get("/dashboard/webhooks")).text)
    for action in ("test", "redeliver", "enable", "disable", "rotate-secret", "delete",
                   "recover"):
        r = await http.post(f"/dashboard/webhooks/{bobs}/{action}",
                            data={"csrf": csrf, "event_id": bobs_event, "since": "2000-01-01"})
        assert r.status_code == 404 and "Webhook not found" in r.text, action
    mine = await added(http, db, receiver)
    r = await act(http, mine, "redeliver", event_id=bobs_event)
    assert r.status_code == 404 and "Event not found" in r.text
    assert await db.fetchval("SELECT count(*) FROM webhooks WHERE id = $1", bobs) == 1
    assert len(receiver.requests) == 1  # nothing more was sent to Bob's endpoint


async def test_no_page_without_a_session_nor_a_form_without_its_csrf_token(
        server: Server, http: httpx.AsyncClient, db: asyncpg.Connection,
        receiver: Receiver) -> None:
    for path in ("/dashboard/webhooks", f"/dashboard/webhooks/{uuid.uuid4()}"):
        r = await http.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    await sign_up(http)
    r = await http.post("/dashboard/webhooks", data={"url": receiver.url, "events[]": "*"})
    assert r.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM webhooks") == 0
    webhook_id = await added(http, db, receiver)
    for action in ("test", "disable", "rotate-secret", "delete", "recover"):
        r = await http.post(f"/dashboard/webhooks/{webhook_id}/{action}",
                            data={"csrf": "forged", "since": "2000-01-01"})
        assert r.status_code == 403, action
    assert await db.fetchval("SELECT enabled FROM webhooks WHERE id = $1", webhook_id)
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
