"""SMS Gateway phones' jobs end to end (contract section 8; SMSGATE.md
sections 4.6-4.7, 5, 6.7-6.11 and the MSG, SSE and ALIAS cases of section
11), case by case, and the lifecycle rules that are ours: listing is holding,
a listed job leaves its phone only after the phone confirmed a cancel
(`test_hold_*`), presence and the pick from the phone's requests, pacing and
the queue as for a WebSocket phone, restart and shutdown.

The phone is the app's own calls (tests/e2e/smsgate_app.py: `GET /events`
read with OkHttp's parser rules, `GET /message`, `PATCH /message` one-item
snapshots); a second phone of the account is another app or a WebSocket
phone (the `phone` fixture). What the broker stored is read through the HTTP
API and PostgreSQL, never from what the phone was told.

Real uvicorn, real PostgreSQL; short clocks from `broker_settings` below
(a test that needs another one parametrizes it indirectly)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import broker.delivery.presence
import broker.ops.protocols
import broker.transports.smsgate.channel
import broker.transports.smsgate.events
from broker import keys
from broker.settings import Settings
from broker.store import deactivate_device
from tests.e2e.conftest import (
    SECRET,
    Account,
    PhoneFactory,
    Server,
    Stored,
    get_message,
    send_sms,
    start_server,
    stop_server,
    stored,
    stored_history,
    wait_for,
)
from tests.e2e.smsgate_app import API, App, Event, EventStream, app_date, register

pytestmark = pytest.mark.timeout(30)

REASSIGN_S = 1
RECIPIENT = "+16502530000"
TEXT = "Your code is 4829"
# SMSGATE.md 4.6.3: RFC 3339 with exactly 3 fractional digits (what we send) and an offset.
DATE_MS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FIRST_EVENTS = ["WebhooksUpdated", "SettingsUpdated"]


@pytest.fixture
def broker_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Short clocks; `@pytest.mark.parametrize("broker_settings", [{...}],
    indirect=True)` changes some for one test."""
    base = Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    reassign_after_s=REASSIGN_S, sweep_s=0.2, last_seen_flush_s=0.2,
                    pool_min=1, pool_max=10)
    return base.with_(**getattr(request, "param", {}))


def settings_for(**changes: Any) -> Any:
    """This test's server with these settings changed."""
    return pytest.mark.parametrize("broker_settings", [changes], indirect=True,
                                   ids=[",".join(f"{k}={v}" for k, v in changes.items())])


# --- helpers -------------------------------------------------------------------------


AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def apps(http: httpx.AsyncClient, account: Account) -> AsyncIterator[AppFactory]:
    """`await apps(name, stream=True)`: a registered app of `account` (Sign
    Up with its key), with its first event stream open and past the two
    events every first stream begins with. Streams closed at the end."""
    made: list[App] = []

    async def make(name: str = "samsung/beyond1ltexx", *, stream: bool = True,
                   key: str | None = None) -> App:
        app = await register(http, key or account.key, name)
        made.append(app)
        if stream:
            await open_first(app)
        return app

    yield make
    for app in made:
        await app.close_events()


async def open_first(app: App) -> EventStream:
    """The device's first stream: it begins with WebhooksUpdated and
    SettingsUpdated, each with `data: null`."""
    s = await app.open_events()
    first = [await s.next(), await s.next()]
    assert first == [Event(n, "null") for n in FIRST_EVENTS], first
    return s


async def next_named(stream: EventStream, name: str, timeout: float = 5.0) -> tuple[Event, list[Event]]:
    """The next event called `name`, and the ones before it."""
    skipped: list[Event] = []
    deadline = time.monotonic() + timeout
    while True:
        e = await stream.next(max(0.01, deadline - time.monotonic()))
        if e.name == name:
            return e, skipped
        skipped.append(e)


async def no_event(stream: EventStream, within: float = 0.3) -> None:
    try:
        e = await asyncio.wait_for(stream.events.get(), within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected event {e}")


async def send(http: httpx.AsyncClient, account: Account, message: str = TEXT,
               **extra: Any) -> dict[str, Any]:
    """`POST /messages/send` answered 201; its `data`."""
    r = await send_sms(http, account.key, message=message, **extra)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def send_to(http: httpx.AsyncClient, account: Account, app: App, message: str = TEXT,
                  **extra: Any) -> str:
    """Send one SMS that goes straight to `app` (`dispatching`); its id."""
    data = await send(http, account, message, **extra)
    assert data["status"] == "dispatching", data
    assert data["device"]["id"] == app.id, data
    return str(data["id"])


async def held_by(app: App, mid: str) -> dict[str, Any]:
    """`app` lists `mid` (and takes it): its item."""
    items = {i["id"]: i for i in await app.list()}
    assert mid in items, items
    return items[mid]


async def patch_raw(app: App, body: Any, path: str = f"{API}/message") -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return await app.http.patch(path, content=body, headers={
            **app.headers, "Content-Type": "application/json"})
    return await app.http.patch(path, json=body, headers=app.headers)


def snapshot(mid: str, state: str, error: str | None = None,
             phone_number: str = RECIPIENT, **states: str) -> dict[str, Any]:
    """One item of `PATCH /message` as SendStateWorker builds it."""
    recipient: dict[str, Any] = {"phoneNumber": phone_number, "state": state}
    if error is not None:
        recipient["error"] = error
    return {"id": mid, "state": state, "recipients": [recipient],
            "states": states or {"Pending": app_date(), state: app_date()}}


def assert_2xx(r: httpx.Response) -> None:
    assert 200 <= r.status_code < 300, (r.status_code, r.text)
    if r.content:
        assert r.headers["content-type"].split(";")[0] == "application/json", r.headers


def assert_error(r: httpx.Response, status: int) -> None:
    """The contract's error shape, as JSON."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].split(";")[0] == "application/json", r.headers
    body = r.json()
    assert set(body) == {"statusCode", "message", "error"}, body
    assert body["statusCode"] == status and isinstance(body["message"], str) and body["message"]


async def devices(http: httpx.AsyncClient, account: Account) -> dict[str, dict[str, Any]]:
    r = await http.get("/devices", headers=account.headers)
    assert r.status_code == 200, r.text
    return {d["id"]: d for d in r.json()["data"]}


async def until_stored(db: asyncpg.Connection, mid: str, want: Stored,
                       timeout: float = 5.0) -> None:
    async def there() -> bool:
        return await stored(db, mid) == want
    try:
        await wait_for(there, timeout, what=f"{mid} stored as {want}")
    except AssertionError:
        raise AssertionError(f"{mid}: {await stored(db, mid)}, wanted {want}") from None


async def handback(db: asyncpg.Connection, mid: str) -> str | None:
    value: str | None = await db.fetchval("SELECT handback FROM messages WHERE id = $1",
                                          uuid.UUID(mid))
    return value


async def online(http: httpx.AsyncClient, account: Account, app: App) -> bool:
    return bool((await devices(http, account))[app.id]["online"])


async def until_online(http: httpx.AsyncClient, account: Account, app: App, want: bool) -> None:
    async def there() -> bool:
        return await online(http, account, app) is want
    await wait_for(there, what=f"{app.id} online={want}")


async def go_away(http: httpx.AsyncClient, account: Account, app: App) -> None:
    """Close every stream of the app and wait until the broker shows it offline."""
    await app.close_events()
    await until_online(http, account, app, False)


def parse_date(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


# --- MSG-1: nothing to send ------------------------------------------------------------


async def test_msg_1_no_jobs_is_an_empty_json_list(apps: AppFactory) -> None:
    app = await apps()
    for order in ("lifo", "fifo"):
        assert await app.list(order) == []
    r = await app.http.get(f"{API}/message", headers=app.headers)  # lifo by default
    assert r.status_code == 200 and r.json() == []
    assert r.headers["content-type"].split(";")[0] == "application/json"
    # An order the app never asks for: 400, in the error shape.
    r = await app.http.get(f"{API}/message", params={"order": "random"}, headers=app.headers)
    assert_error(r, 400)


# --- MSG-2: a job as the app reads it --------------------------------------------------


async def test_msg_2_a_job_is_listed_with_every_field_the_app_reads(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    [item] = await app.list()
    assert UUID_RE.match(item["id"]) and len(item["id"]) == 36 and item["id"] == mid, item
    assert item["message"] == TEXT and item["textMessage"] == {"text": TEXT}, item
    assert item["phoneNumbers"] == [RECIPIENT], item
    assert item["withDeliveryReport"] is True and item["state"] == "Pending", item
    assert DATE_MS_RE.match(item["createdAt"]), item
    created = await db.fetchval("SELECT created_at FROM messages WHERE id = $1", uuid.UUID(mid))
    assert abs(parse_date(item["createdAt"]) - created) < dt.timedelta(milliseconds=1), item
    assert "validUntil" not in item, item  # no ttl: the app never expires it itself
    # Nothing the app would choke on: no data message, no priority, sim or nulls.
    assert set(item) == {"id", "message", "textMessage", "phoneNumbers",
                         "withDeliveryReport", "state", "createdAt"}, item
    # Listed is held, still `dispatching` until the phone reports.
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    # A ttl reaches the phone as validUntil, which the app enforces itself.
    timed = await send_to(http, account, app, ttl=600)
    item = await held_by(app, timed)
    assert DATE_MS_RE.match(item["validUntil"]), item
    until = parse_date(item["validUntil"]) - parse_date(item["createdAt"])
    assert abs(until - dt.timedelta(seconds=600)) < dt.timedelta(milliseconds=2), item




# --- MSG-3: order and page --------------------------------------------------------------


async def test_msg_3_fifo_lists_the_oldest_first_and_lifo_the_newest(
        http: httpx.AsyncClient, account: Account, apps: AppFactory) -> None:
    app = await apps()
    first = await send_to(http, account, app, "first")
    second = await send_to(http, account, app, "second")
    # Listing again is harmless: the same held jobs, until the phone reports.
    assert [i["id"] for i in await app.list("fifo")] == [first, second]
    assert [i["id"] for i in await app.list("lifo")] == [second, first]
    assert [i["message"] for i in await app.list("FIFO")] == ["first", "second"]


@settings_for(inflight_window=0, default_send_rate=0)  # 101 unanswered jobs on one phone
async def test_msg_3_at_most_100_are_listed_and_the_next_patch_announces_the_rest(
        http: httpx.AsyncClient, account: Account, apps: AppFactory) -> None:
    app = await apps()
    stream = app.streams[0]
    ids: list[str] = []
    for batch in range(0, 101, 25):
        ids += await asyncio.gather(*(send_to(http, account, app, f"m{n}")
                                      for n in range(batch, min(batch + 25, 101))))
    # One announcement for the burst: the phone had not looked yet.
    assert (await stream.next()).name == "MessageEnqueued"
    await no_event(stream)
    page = await app.list("fifo")
    assert len(page) == 100
    oldest = await app.list("fifo")
    assert [i["id"] for i in oldest] == [i["id"] for i in page]
    # The phone reports on one: it is told to look again, and the 101st is there.
    await app.report(page[0]["id"], "Processed")
    assert (await stream.next()).name == "MessageEnqueued"
    rest = {i["id"] for i in await app.list("fifo")}
    assert len(rest) == 100 and page[0]["id"] not in rest
    assert rest == set(ids) - {page[0]["id"]}


# --- MSG-4 and MSG-5: the reports -----------------------------------------------------


async def test_msg_4_patch_pending_is_the_ack_and_the_job_is_no_longer_listed(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    await held_by(app, mid)
    assert_2xx(await patch_raw(app, [snapshot(mid, "Pending")]))
    assert await app.list() == []
    assert await stored(db, mid) == Stored("sending", None, app.id)
    assert_2xx(await patch_raw(app, [snapshot(mid, "Pending")]))  # again: nothing changes
    assert await stored_history(db, mid) == ["queued", "dispatching", "sending"]


async def test_msg_5_processed_sent_delivered_show_in_the_api_with_phone_offsets(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    await held_by(app, mid)
    states: dict[str, str] = {"Pending": app_date()}
    for state, status in (("Processed", "sending"), ("Sent", "sent"),
                          ("Delivered", "delivered")):
        states[state] = app_date()  # +07:00, as a phone in Jakarta writes them
        assert_2xx(await patch_raw(app, [snapshot(mid, state, **states)]))
        got = await get_message(http, account, mid)
        assert got["status"] == status and got["error"] is None, got
        assert got["device"]["id"] == app.id, got
    assert [h["status"] for h in got["history"]] == [
        "queued", "dispatching", "sending", "sent", "delivered"]
    # Android 5-6 writes `+-5:00` offsets (SMSGATE.md 2): a bad date in
    # `states` must not cost the report (MUST 5); unknown fields are ignored
    # (as Gson does). And two items in one PATCH are both taken.
    odd = await send_to(http, account, app)
    other = await send_to(http, account, app)
    await app.list()
    item = snapshot(odd, "Sent", Pending="2024-05-13T04:49:17.357+-5:00", Sent=12345,
                    Processed="yesterday")
    item["unknownField"] = {"x": 1}
    assert_2xx(await patch_raw(app, [item, snapshot(other, "Failed", error="no SIM")]))
    assert await stored(db, odd) == Stored("sent", None, app.id)
    assert await stored(db, other) == Stored("failed", "no SIM", app.id)


async def test_msg_5_regressions_change_nothing_and_a_late_sent_is_history_only(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    late = await send_to(http, account, app)
    await app.list()
    # A first report of Sent implies the ack: the app has no receipt to wait for.
    await app.report(mid, "Sent")
    assert await stored_history(db, mid) == ["queued", "dispatching", "sending", "sent"]
    for stale in ("Processed", "Pending", "Cancelled"):  # two SendStateWorkers raced
        assert_2xx(await app.patch(mid, stale))
        assert await stored(db, mid) == Stored("sent", None, app.id), stale
    await app.report(mid, "Delivered")
    for stale in ("Processed", "Sent", "Failed", "Cancelled"):
        assert_2xx(await app.patch(mid, stale, error="late"))
        assert await stored(db, mid) == Stored("delivered", None, app.id), stale
    assert await stored_history(db, mid) == [
        "queued", "dispatching", "sending", "sent", "delivered"]
    # A first report of Delivered (the Sent one lost) implies the ack too; the
    # late Sent is recorded in the history, the status stays (contract section 5).
    await app.report(late, "Delivered")
    await app.report(late, "Sent")
    got = await get_message(http, account, late)
    assert got["status"] == "delivered", got
    assert [h["status"] for h in got["history"]] == [
        "queued", "dispatching", "sending", "delivered", "sent"]


# --- MSG-6: ids that are not the phone's --------------------------------------------


async def test_msg_6_unknown_ids_are_2xx_and_change_nothing(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    await app.list()
    for unknown in (str(uuid.uuid4()), "PyDmBQZZXYmyxMwED8Fzy", "x" * 36):
        for state in ("Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelled"):
            assert_2xx(await app.patch(unknown, state))
    # A full batch (100 items, the most a PATCH may carry) of them too.
    assert_2xx(await patch_raw(app, [snapshot(str(uuid.uuid4()), "Sent") for _ in range(100)]))
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    assert [i["id"] for i in await app.list()] == [mid]
    assert await db.fetchval("SELECT count(*) FROM messages") == 1


async def test_msg_6_another_phones_job_is_2xx_and_changes_nothing(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        make_account: Callable[[str], Awaitable[Account]], db: asyncpg.Connection) -> None:
    other = await apps("other")
    app = await apps("owner")  # registered last: the freshest
    mid = await send_to(http, account, app)
    await app.list()
    for state in ("Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelled"):
        assert_2xx(await other.patch(mid, state, error="not mine"))
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    assert await stored_history(db, mid) == ["queued", "dispatching"]
    assert await other.list() == []
    assert [i["id"] for i in await app.list()] == [mid]
    # ...and another account's phone's reports neither.
    foreign = await register(http, (await make_account("stranger@example.com")).key)
    for state in ("Processed", "Delivered", "Cancelled"):
        assert_2xx(await foreign.patch(mid, state))
    assert await stored(db, mid) == Stored("dispatching", None, app.id)


# --- MSG-7: bodies the app never sends ----------------------------------------------


async def test_msg_7_an_empty_list_and_other_bodies_the_app_never_sends_are_400(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    await app.list()
    assert_error(await patch_raw(app, []), 400)
    for body in (b"[{", b"not json", {"id": mid, "state": "Sent"},  # an object, not a list
                 [{"id": mid}], [{"id": mid, "state": "Cancelling"}],  # the phone never sends it
                 [{"id": "", "state": "Sent"}], [snapshot(mid, "Sent")] * 101):
        assert_error(await patch_raw(app, body), 400)
    assert await stored(db, mid) == Stored("dispatching", None, app.id)


# --- MSG-8: failures --------------------------------------------------------------------


async def test_msg_8_failed_stores_the_phones_error(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    before_send = await send_to(http, account, app)
    after_send = await send_to(http, account, app)
    long_error = await send_to(http, account, app)
    await app.list()
    # Failed before it was sent (the SIM is gone): straight from dispatching.
    await app.report(before_send, "Failed", error="Can't send message: SIM 2 not found")
    assert await stored(db, before_send) == Stored(
        "failed", "Can't send message: SIM 2 not found", app.id)
    await app.report(after_send, "Processed")
    await app.report(after_send, "Failed", error="Send result: RESULT_ERROR_GENERIC_FAILURE")
    got = await get_message(http, account, after_send)
    assert (got["status"], got["error"]) == ("failed", "Send result: RESULT_ERROR_GENERIC_FAILURE")
    assert [h["status"] for h in got["history"]] == ["queued", "dispatching", "sending", "failed"]
    await app.report(long_error, "Failed", error="Delivery result: " + "x" * 2000)
    row = await stored(db, long_error)
    assert row.status == "failed" and row.error == ("Delivery result: " + "x" * 2000)[:500]


# --- MSG-9: cancel = the broker asks a listed job back ---------------------------------
# Our client API has no cancel: a job is asked back when its phone has been away
# past the reassign delay while another phone could send it (contract section 8).


async def test_msg_9_a_job_asked_back_is_cancelled_listed_cancelling_and_moves_once_cancelled(
        http: httpx.AsyncClient, account: Account, apps: AppFactory, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    await held_by(app, mid)
    await go_away(http, account, app)
    await asyncio.sleep(REASSIGN_S + 0.4)
    assert await handback(db, mid) is None  # nobody else could send it: not asked back
    # Another phone (a WebSocket one: a mixed account) with room: now it is
    # asked back, not moved, since its phone may have sent it.
    ws = await phone(await account.make_device("WebSocket phone"))
    await wait_for(lambda: _is_requested(db, mid), what="the job asked back")
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    await ws.nothing(0.3)
    # The phone comes back: its first stream cancels the job...
    stream = await open_first(app)
    cancelled, _ = await next_named(stream, "MessageCancelled")
    assert cancelled.json() == {"messageId": mid}
    # ...and its listing says Cancelling, the state the app answers with a Cancelled.
    [item] = await app.list()
    assert (item["id"], item["state"]) == (mid, "Cancelling")
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    assert_2xx(await app.patch(mid, "Cancelled"))
    # Given back: straight to the other phone, which is offered it.
    assert await stored(db, mid) == Stored("dispatching", None, ws.device.id)
    frame = await ws.expect("send")
    assert (frame["id"], frame["recipient"], frame["message"]) == (mid, RECIPIENT, TEXT)
    assert await app.list() == []
    assert (await ws.ask({"type": "ack", "id": mid}))["status"] == "sending"
    assert await stored_history(db, mid) == ["queued", "dispatching", "sending"]
    # Never back to the phone that gave it back: its late reports change nothing.
    for state in ("Processed", "Sent", "Cancelled"):
        assert_2xx(await app.patch(mid, state))
    assert await stored(db, mid) == Stored("sending", None, ws.device.id)


async def _is_requested(db: asyncpg.Connection, mid: str) -> bool:
    return await handback(db, mid) == "requested"


async def test_hold_a_job_asked_back_that_the_phone_sent_stays_with_it(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    other = await apps("other")
    app = await apps("holder")
    await app.list()
    processed = await send_to(http, account, app, "processed")
    sent = await send_to(http, account, app, "sent")
    await app.list()
    await go_away(http, account, app)

    async def asked() -> bool:
        return [await handback(db, m) for m in (processed, sent)] == ["requested"] * 2
    await wait_for(asked, timeout=REASSIGN_S + 4, what="both jobs asked back")
    stream = await open_first(app)
    got = {(await next_named(stream, "MessageCancelled"))[0].json()["messageId"]
           for _ in range(2)}
    assert got == {processed, sent}
    assert {(i["id"], i["state"]) for i in await app.list()} == {
        (processed, "Cancelling"), (sent, "Cancelling")}
    # Too late: the app had handed them to the modem (SMSGATE.md 6.8), and says so.
    await app.report(processed, "Processed")
    await app.report(sent, "Sent")
    assert await stored(db, processed) == Stored("sending", None, app.id)
    assert await stored(db, sent) == Stored("sent", None, app.id)
    assert await app.list() == []
    assert await other.list() == []
    # A Cancelled after that changes nothing; the reports go on.
    assert_2xx(await app.patch(processed, "Cancelled"))
    await app.report(processed, "Delivered")
    assert await stored(db, processed) == Stored("delivered", None, app.id)
    assert await stored(db, sent) == Stored("sent", None, app.id)


async def test_hold_a_phone_that_polls_is_not_away(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    """No stream, but requests: the phone is there (contract section 8: away
    is no open stream *and* no request)."""
    other = await apps("other")
    app = await apps("holder")
    await app.list()
    mid = await send_to(http, account, app)
    await held_by(app, mid)
    await app.close_events()
    deadline = time.monotonic() + REASSIGN_S + 0.4
    while time.monotonic() < deadline:
        r = await app.http.get(f"{API}/settings", headers=app.headers)
        assert r.status_code == 200
        await asyncio.sleep(0.3)
    assert await handback(db, mid) is None
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    assert await other.list() == []
    # It stops: away from its last request on, and asked back after the delay.
    await wait_for(lambda: _is_requested(db, mid), timeout=REASSIGN_S + 4, what="asked back")


async def test_hold_a_job_never_listed_moves_after_the_reassign_delay(
        http: httpx.AsyncClient, account: Account, apps: AppFactory, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """Like a WebSocket job never acked: announced, not listed, the phone
    gone past the delay: it goes to another phone, no hand-back asked."""
    ws = await phone(await account.make_device("WebSocket phone"))
    app = await apps()
    await app.list()
    mid = await send_to(http, account, app)
    assert (await app.streams[0].next()).name == "MessageEnqueued"
    await go_away(http, account, app)
    frame = await ws.expect("send", timeout=REASSIGN_S + 4)
    assert frame["id"] == mid
    assert await stored(db, mid) == Stored("dispatching", None, ws.device.id)
    assert await handback(db, mid) is None
    # The phone comes back: nothing of it to list, nothing to cancel (it never had it).
    stream = await open_first(app)
    assert await app.list() == []
    await no_event(stream)


async def test_hold_a_job_given_back_with_no_other_phone_waits_for_one_never_back(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps("first")
    mid = await send_to(http, account, app)
    await held_by(app, mid)
    # The app cancels it itself (it could not send it): nobody else to take it now.
    await app.report(mid, "Cancelled")
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    assert await handback(db, mid) == "released"
    assert await app.list() == []
    await asyncio.sleep(0.5)
    assert await app.list() == []  # never again this phone's
    # A phone with room connects: the sweeper moves it there.
    other = await apps("second")
    await until_stored(db, mid, Stored("dispatching", None, other.id))
    await next_named(other.streams[0], "MessageEnqueued")
    assert [(i["id"], i["state"]) for i in await other.list()] == [(mid, "Pending")]
    assert await handback(db, mid) is None
    await other.report(mid, "Delivered")
    assert await stored_history(db, mid) == ["queued", "dispatching", "sending", "delivered"]
    assert await app.list() == []


# --- MSG-10: one unique number ----------------------------------------------------------


async def test_msg_10_the_phone_gets_one_unique_e164_number(
        http: httpx.AsyncClient, account: Account, apps: AppFactory) -> None:
    app = await apps()
    mid = await send_to(http, account, app, recipient="+1 650-253-0000")
    item = await held_by(app, mid)
    assert item["phoneNumbers"] == [RECIPIENT]  # one number, E.164: no duplicates possible
    # Several recipients cannot be asked for at the client API at all.
    for recipient in ([RECIPIENT, RECIPIENT], f"{RECIPIENT},{RECIPIENT}"):
        r = await send_sms(http, account.key, recipient=recipient)  # type: ignore[arg-type]
        assert r.status_code == 400, r.text
    assert [i["id"] for i in await app.list()] == [mid]


# --- SSE-1..5 ---------------------------------------------------------------------------


@settings_for(request_timeout_s=1.0)
async def test_sse_1_a_stream_is_unbuffered_event_stream_with_keepalives(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.transports.smsgate.events, "KEEPALIVE_S", 0.2)
    app = await apps(stream=False)
    stream = await open_first(app)
    headers = stream.response.headers
    assert headers["content-type"].split(";")[0] == "text/event-stream", headers
    assert headers["cache-control"] == "no-cache", headers
    assert headers["x-accel-buffering"] == "no", headers
    # OkHttp asked for gzip (SSE_HEADERS): an event stream is never compressed.
    assert "content-encoding" not in headers, headers
    # Past the request deadline (1 s here): the stream lives on, kept alive.
    await asyncio.sleep(1.1)
    assert not stream.ended.is_set()
    assert len(stream.comments) >= 4 and set(stream.comments) == {"keepalive"}, stream.comments
    await no_event(stream, 0.05)  # comments are not events
    await send_to(http, account, app)
    assert (await stream.next()).name == "MessageEnqueued"


async def test_sse_1_head_answers_the_headers_and_holds_nothing(
        http: httpx.AsyncClient, account: Account, apps: AppFactory) -> None:
    """Starlette answers HEAD on every GET route: a monitor's HEAD must not
    become a stream nobody reads (holding its connection, the phone online)."""
    app = await apps(stream=False)
    r = await http.head(f"{API}/events", headers=app.headers, timeout=3)
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == "text/event-stream", r.headers
    # The same keep-alive connection answers the next request at once...
    assert not await online(http, account, app)
    # ...and a bad token is still a 401.
    r = await http.head(f"{API}/events", headers={"Authorization": "Bearer bogus"}, timeout=3)
    assert r.status_code == 401


async def test_sse_2_a_new_job_is_announced_at_once_and_again_only_once_the_phone_looked(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.transports.smsgate.channel, "REANNOUNCE_S", 0.5)
    app = await apps()
    stream = app.streams[0]
    started = time.monotonic()
    await send_to(http, account, app, "one")
    # Announced within milliseconds, with the `data:` line OkHttp needs.
    assert await stream.next(timeout=1.0) == Event("MessageEnqueued", "null")
    assert time.monotonic() - started < 1.0
    await send_to(http, account, app, "two")  # the phone has not looked yet: no second event
    await no_event(stream)
    assert [i["message"] for i in await app.list("fifo")] == ["one", "two"]
    await send_to(http, account, app, "three")  # it looked: announced again
    assert (await stream.next()).name == "MessageEnqueued"
    # An announcement the phone never followed is made again past REANNOUNCE_S
    # (it may have been lost with a broken stream).
    await asyncio.sleep(0.6)
    await send_to(http, account, app, "four")
    assert (await stream.next()).name == "MessageEnqueued"
    assert [i["message"] for i in await app.list("fifo")] == ["one", "two", "three", "four"]


async def test_sse_2_the_first_stream_announces_the_jobs_the_phone_has_open(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    assert (await app.streams[0].next()).name == "MessageEnqueued"
    await go_away(http, account, app)  # back within the reassign delay: still its job
    stream = await open_first(app)
    assert (await stream.next()).name == "MessageEnqueued"
    assert [i["id"] for i in await app.list()] == [mid]
    assert await stored(db, mid) == Stored("dispatching", None, app.id)


async def test_sse_2_a_queued_job_goes_to_the_phone_whose_stream_opens(
        http: httpx.AsyncClient, account: Account, apps: AppFactory, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    full_device = await account.make_device("Full", send_rate=1)
    full = await phone(full_device)
    assert (await send(http, account))["device"]["id"] == full_device.id
    await full.expect("send")
    data = await send(http, account, "waiting")
    assert data["status"] == "queued" and data["device"]["id"] == full_device.id, data
    mid = data["id"]
    app = await apps(stream=False)  # registered, no stream yet: not connected
    stream = await open_first(app)
    assert (await stream.next()).name == "MessageEnqueued"
    assert [i["id"] for i in await app.list()] == [mid]
    assert await stored(db, mid) == Stored("dispatching", None, app.id)
    assert await stored_history(db, mid) == ["queued", "dispatching"]
    await full.nothing()


async def test_sse_3_two_streams_both_receive_and_only_the_first_is_told_to_fetch(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    first = app.streams[0]
    second = await app.open_events()
    await no_event(second)  # the device had a stream open: no WebhooksUpdated/SettingsUpdated
    mid = await send_to(http, account, app)
    assert (await first.next()).name == "MessageEnqueued"
    assert (await second.next()).name == "MessageEnqueued"
    assert [i["id"] for i in await app.list()] == [mid]


async def test_sse_3_a_fifth_stream_ends_the_oldest_and_the_phone_is_online_until_the_last_ends(
        http: httpx.AsyncClient, account: Account, apps: AppFactory) -> None:
    app = await apps()
    streams = [app.streams[0]] + [await app.open_events() for _ in range(4)]
    await asyncio.wait_for(streams[0].ended.wait(), 3)
    assert not any(s.ended.is_set() for s in streams[1:])
    await send_to(http, account, app)
    for s in streams[1:]:
        assert (await s.next()).name == "MessageEnqueued"
    for s in streams[1:4]:
        await s.close()
        await asyncio.sleep(0.1)
        assert await online(http, account, app)
    await streams[4].close()
    await until_online(http, account, app, False)


async def test_sse_4_a_job_never_listed_is_cancelled_when_its_ttl_passes(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    stream = app.streams[0]
    mid = await send_to(http, account, app, ttl=1)
    assert (await stream.next()).name == "MessageEnqueued"
    cancelled = await stream.next(timeout=4)
    assert cancelled.name == "MessageCancelled" and cancelled.json() == {"messageId": mid}
    assert await stored(db, mid) == Stored("failed", "expired", app.id)
    assert await app.list() == []
    # The app may still report (it should not, it was cancelled): nothing changes.
    assert_2xx(await app.patch(mid, "Processed"))
    assert await stored(db, mid) == Stored("failed", "expired", app.id)


@settings_for(reassign_after_s=2)
async def test_hold_a_listed_jobs_expiry_waits_for_the_phones_report(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    """The ttl reaches the phone as `validUntil` and the app enforces it; a
    listed job fails `expired` only at validUntil + the reassign delay, so a
    message the phone did send in time is never shown expired."""
    app = await apps()
    stream = app.streams[0]
    listed = await send_to(http, account, app, "listed", ttl=1)
    reported = await send_to(http, account, app, "reported", ttl=1)
    await app.list()
    unlisted = await send_to(http, account, app, "unlisted", ttl=1)
    await until_stored(db, unlisted, Stored("failed", "expired", app.id), timeout=4)
    cancelled, _ = await next_named(stream, "MessageCancelled")
    assert cancelled.json() == {"messageId": unlisted}
    # Past its ttl, within the grace: still the phone's, and its late report counts.
    assert await stored(db, listed) == Stored("dispatching", None, app.id)
    await app.report(reported, "Sent")
    assert await stored(db, reported) == Stored("sent", None, app.id)
    await until_stored(db, listed, Stored("failed", "expired", app.id), timeout=5)
    cancelled, _ = await next_named(stream, "MessageCancelled")
    assert cancelled.json() == {"messageId": listed}
    assert await stored(db, reported) == Stored("sent", None, app.id)
    assert [i["id"] for i in await app.list()] == []


async def test_sse_5_a_bad_token_is_401(http: httpx.AsyncClient, account: Account,
                                        apps: AppFactory, db: asyncpg.Connection) -> None:
    ws = await account.make_device("WebSocket phone")
    gone = await apps("deactivated", stream=False)
    await deactivate_device(db, uuid.UUID(gone.id))
    for authorization in (None, "Bearer 987654321", f"Bearer {keys.make_secret(keys.TOKEN_KIND)[0]}",
                          f"Bearer {ws.token}", f"Bearer {gone.token}", f"Basic {gone.token}",
                          f"Bearer {account.key}"):
        headers = {"User-Agent": "okhttp/4.10.0"}
        if authorization is not None:
            headers["Authorization"] = authorization
        r = await http.get(f"{API}/events", headers=headers, timeout=3)
        assert_error(r, 401)


# --- ALIAS-1 ----------------------------------------------------------------------------


async def test_alias_1_messages_answers_like_message(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    first = await send_to(http, account, app, "first")
    second = await send_to(http, account, app, "second")
    for path in (f"{API}/message", f"{API}/messages", "/mobile/v1/message", "/mobile/v1/messages"):
        for order in ("fifo", "lifo"):
            r = await http.get(path, params={"order": order}, headers=app.headers)
            assert r.status_code == 200, (path, r.text)
            assert r.headers["content-type"].split(";")[0] == "application/json"
            want = [first, second] if order == "fifo" else [second, first]
            assert [i["id"] for i in r.json()] == want, path
        assert_error(await http.get(path, params={"order": "x"}, headers=app.headers), 400)
        assert_error(await patch_raw(app, [], path), 400)
    assert_2xx(await patch_raw(app, [snapshot(first, "Sent")], f"{API}/messages"))
    assert_2xx(await patch_raw(app, [snapshot(second, "Delivered")], "/mobile/v1/messages"))
    assert await stored(db, first) == Stored("sent", None, app.id)
    assert await stored(db, second) == Stored("delivered", None, app.id)


# --- the other clocks of a listed job ------------------------------------------------


@settings_for(no_report_after_s=0.5)
async def test_hold_a_listed_job_with_no_report_fails_as_no_report(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    listed = await send_to(http, account, app, "listed")
    await held_by(app, listed)
    unlisted = await send_to(http, account, app, "unlisted")
    await until_stored(db, listed, Stored("failed", "no report", app.id), timeout=4)
    # Never listed: the phone never had it, no report is due.
    assert await stored(db, unlisted) == Stored("dispatching", None, app.id)
    # The phone's late report is kept in the history; the status stays failed.
    await app.report(listed, "Sent")
    assert await stored(db, listed) == Stored("failed", "no report", app.id)
    assert await stored_history(db, listed) == ["queued", "dispatching", "failed", "sent"]
    assert [i["id"] for i in await app.list()] == [unlisted]


async def test_hold_deactivating_a_phone_fails_its_listed_jobs_and_moves_the_others(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    other = await apps("other")
    app = await apps("deactivated")
    await app.list()
    listed = await send_to(http, account, app, "listed")
    await held_by(app, listed)
    unlisted = await send_to(http, account, app, "unlisted")
    assert await deactivate_device(db, uuid.UUID(app.id))
    # Listed: it may have been sent, and no other phone may send it.
    assert await stored(db, listed) == Stored("failed", "device deactivated", app.id)
    assert await stored_history(db, listed) == ["queued", "dispatching", "failed"]
    await asyncio.wait_for(app.streams[0].ended.wait(), 3)  # its stream is ended
    r = await app.http.get(f"{API}/message", headers=app.headers)
    assert_error(r, 401)
    # Never listed: another phone sends it.
    await until_stored(db, unlisted, Stored("dispatching", None, other.id),
                       timeout=REASSIGN_S + 4)
    await next_named(other.streams[0], "MessageEnqueued")
    assert [i["id"] for i in await other.list()] == [unlisted]


# --- presence, the pick, pacing ----------------------------------------------------------


async def test_presence_online_while_a_stream_is_open_and_last_seen_from_requests_only(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.transports.smsgate.events, "KEEPALIVE_S", 0.2)
    app = await apps(stream=False)
    listed = (await devices(http, account))[app.id]
    assert (listed["transport"], listed["online"], listed["active"]) == ("smsgate", False, True)
    stream = await open_first(app)
    shown = (await devices(http, account))[app.id]
    assert shown["online"] is True and shown["transport"] == "smsgate"
    # Keepalives are the broker's writes, not the phone's: last-seen stays.
    await asyncio.sleep(0.7)
    assert len(stream.comments) >= 2
    assert (await devices(http, account))[app.id]["lastSeen"] == shown["lastSeen"]
    # A request of the phone moves it.
    await app.list()
    after_request = (await devices(http, account))[app.id]["lastSeen"]
    assert parse_date(after_request) > parse_date(shown["lastSeen"])
    await go_away(http, account, app)
    # Without a stream too: a request still moves it (through PostgreSQL).
    away = (await devices(http, account))[app.id]["lastSeen"]
    await asyncio.sleep(0.05)
    r = await app.http.get(f"{API}/settings", headers=app.headers)
    assert r.status_code == 200

    async def moved() -> bool:
        seen = (await devices(http, account))[app.id]["lastSeen"]
        return parse_date(seen) > parse_date(away)
    await wait_for(moved, what="lastSeen moved by a request with no stream")
    assert (await devices(http, account))[app.id]["online"] is False


async def test_presence_the_phone_that_asked_last_gets_the_next_job(
        http: httpx.AsyncClient, account: Account, apps: AppFactory, phone: PhoneFactory) -> None:
    a = await apps("a")
    b = await apps("b")
    ws_device = await account.make_device("WebSocket phone")
    ws = await phone(ws_device)  # connected last: the freshest now
    assert (await send(http, account))["device"]["id"] == ws_device.id
    await ws.expect("send")
    for caller, request in ((a, "GET /message"), (b, "GET /settings"), (a, "PATCH /device"),
                            (b, "GET /events")):
        if request == "GET /message":
            await caller.list()
        elif request == "GET /settings":
            assert (await caller.http.get(f"{API}/settings", headers=caller.headers)).is_success
        elif request == "PATCH /device":
            r = await caller.http.patch(f"{API}/device", json={"id": caller.id},
                                        headers=caller.headers)
            assert r.is_success, r.text
        else:
            await caller.open_events()  # a second stream: a request too
        data = await send(http, account)
        assert data["device"]["id"] == caller.id, (request, data)
    await ws.send({"type": "ping"})  # a frame of the WebSocket phone: the freshest again
    await ws.expect("pong")
    assert (await send(http, account))["device"]["id"] == ws_device.id


async def test_pacing_an_sse_phone_at_its_rate_queues_and_sends_when_room_comes(
        http: httpx.AsyncClient, account: Account, apps: AppFactory, db: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.delivery.presence, "PACING_WINDOW_S", 1.0)
    app = await apps(stream=False)
    await db.execute("UPDATE devices SET send_rate = 2 WHERE id = $1", uuid.UUID(app.id))
    stream = await open_first(app)
    first = await send_to(http, account, app, "one")
    second = await send_to(http, account, app, "two")
    data = await send(http, account, "three")
    assert data["status"] == "queued" and data["device"]["id"] == app.id, data
    third = data["id"]
    assert (await stream.next()).name == "MessageEnqueued"
    assert [i["id"] for i in await app.list("fifo")] == [first, second]
    await app.report(first, "Sent")
    await app.report(second, "Sent")
    assert await stored(db, third) == Stored("queued", None, app.id)
    # Room comes with the window: the job goes out and the phone is told.
    assert (await stream.next(timeout=4)).name == "MessageEnqueued"
    assert await stored(db, third) == Stored("dispatching", None, app.id)
    assert [i["id"] for i in await app.list()] == [third]
    assert await stored_history(db, third) == ["queued", "dispatching"]


async def test_pacing_an_sse_phone_at_its_rate_is_passed_over_for_a_websocket_phone(
        http: httpx.AsyncClient, account: Account, apps: AppFactory, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    ws_device = await account.make_device("WebSocket phone")
    ws = await phone(ws_device)
    app = await apps(stream=False)
    await db.execute("UPDATE devices SET send_rate = 1 WHERE id = $1", uuid.UUID(app.id))
    await open_first(app)
    await app.list()  # the freshest
    await send_to(http, account, app)
    data = await send(http, account, "to the other")
    assert data["status"] == "dispatching" and data["device"]["id"] == ws_device.id, data
    assert (await ws.expect("send"))["id"] == data["id"]
    assert len(await app.list()) == 1


# --- restart and shutdown -----------------------------------------------------------------


async def stop_timed(server: Server) -> float:
    """Stop the server as `serve` does; how long that took."""
    started = time.monotonic()
    await stop_server(server)
    return time.monotonic() - started


async def test_hold_a_restarted_broker_lists_the_job_the_phone_held_again(
        broker_settings: Settings, database_url: str, account: Account,
        db: asyncpg.Connection) -> None:
    first = await start_server(broker_settings, database_url)
    stopped = False
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            app = await register(http, account.key)
            stream = await open_first(app)
            held = await send_to(http, account, app, "held")
            reported = await send_to(http, account, app, "reported")
            assert {i["id"] for i in await app.list()} == {held, reported}
            await app.report(reported, "Processed")
            stopped = True
            assert await stop_timed(first) < 3
            await asyncio.wait_for(stream.ended.wait(), 1)
            await app.close_events()
    finally:
        if not stopped:
            await stop_server(first)

    second = await start_server(broker_settings, database_url)
    try:
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            app.http = http
            # Held and not reported on: listed again (the phone may not have it any more).
            [item] = await app.list()
            assert (item["id"], item["message"], item["state"]) == (held, "held", "Pending")
            stream = await open_first(app)
            assert (await stream.next()).name == "MessageEnqueued"
            await app.report(held, "Delivered")
            await app.report(reported, "Sent")
            await app.close_events()
    finally:
        await stop_server(second)
    assert await stored(db, held) == Stored("delivered", None, app.id)
    assert await stored(db, reported) == Stored("sent", None, app.id)


async def test_shutdown_ends_every_open_stream_promptly(
        broker_settings: Settings, database_url: str, account: Account,
        db: asyncpg.Connection) -> None:
    srv = await start_server(broker_settings, database_url)
    stopped = False
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as http:
            a = await register(http, account.key, "a")
            b = await register(http, account.key, "b")
            streams = [await open_first(a), await a.open_events(), await open_first(b)]
            stopped = True
            # Not uvicorn's graceful wait for open requests: the streams end first.
            assert await stop_timed(srv) < 3
            for s in streams:
                await asyncio.wait_for(s.ended.wait(), 1)
            await a.close_events()
            await b.close_events()
    finally:
        if not stopped:
            await stop_server(srv)


# --- the in-flight window of an SSE phone ------------------------------------------
# A job handed to a phone and not answered counts against its window
# (`inflight_window`): these jobs are no longer in flight and must not.


@settings_for(no_report_after_s=0.5, inflight_window=1)
async def test_hold_a_job_failed_as_no_report_frees_the_phones_window(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    await held_by(app, mid)
    await until_stored(db, mid, Stored("failed", "no report", app.id), timeout=4)
    # Connected all along, with room by its rate: the next job is its own at once.
    await send_to(http, account, app, "next")


@settings_for(inflight_window=1)
async def test_hold_a_job_given_back_is_not_offered_again_when_the_phone_returns(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    app = await apps()
    mid = await send_to(http, account, app)
    await held_by(app, mid)
    await app.report(mid, "Cancelled")  # nobody else to take it: it waits, released
    await go_away(http, account, app)
    stream = await open_first(app)
    await no_event(stream)  # nothing of its own to look at
    assert await app.list() == []
    await send_to(http, account, app, "next")


@settings_for(inflight_window=0, default_send_rate=0)
async def test_hold_listings_and_reports_racing_all_succeed(
        http: httpx.AsyncClient, account: Account, apps: AppFactory,
        db: asyncpg.Connection) -> None:
    """The app's PullMessagesWorker and SendStateWorkers run at once: listings
    lock the phone's jobs while reports lock them for the group commit."""
    app = await apps("a")
    other = await apps("b")
    for _ in range(2):
        await app.list()  # the freshest: the next 10 are its own
        mine = await asyncio.gather(*(send_to(http, account, app, f"a{n}") for n in range(10)))
        await other.list()
        theirs = await asyncio.gather(*(send_to(http, account, other, f"b{n}")
                                        for n in range(10)))
        await app.list()
        await other.list()
        answers = await asyncio.gather(
            *(app.patch(m, "Processed") for m in mine),
            *(other.patch(m, "Sent") for m in theirs),
            *(app.http.get(f"{API}/message", headers=app.headers) for _ in range(10)),
            *(other.http.get(f"{API}/message", params={"order": "fifo"},
                             headers=other.headers) for _ in range(10)))
        assert [(r.status_code, r.text) for r in answers if not r.is_success] == []
        assert await app.list() == [] and await other.list() == []
    counts = dict(await db.fetch("SELECT status, count(*) FROM messages GROUP BY status"))
    assert sum(counts.values()) == 40 and set(counts) <= {"sending", "sent"}, counts


async def test_sse_a_peer_that_stops_acknowledging_is_dropped_in_a_minute(
        server: Server, apps: AppFactory) -> None:
    """A phone gone without a FIN has no pong to miss on SSE: the broker's
    sockets carry TCP_USER_TIMEOUT, so the unacknowledged keepalives end the
    stream within about a minute, not the kernel's ~15 of retransmits."""
    await apps()  # registered, its stream open
    socks = [c.transport.get_extra_info("socket")
             for c in server.uvicorn.server_state.connections]
    assert socks, "no server-side connection found"
    timeouts = {s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) for s in socks}
    assert timeouts == {broker.ops.protocols.DEAD_PEER_MS}, timeouts
