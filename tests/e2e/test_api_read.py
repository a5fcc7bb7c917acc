"""Reading state end to end (contract section 3, "Reading state"): one
message with its history, the keyset-paginated listing, devices with their
presence, POST /devices, and that no account ever sees another's data."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import httpx
import pytest

from broker.settings import Settings
from tests.conftest import error
from tests.e2e.conftest import Account, Device, PhoneFactory, send_sms, wait_for

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def broker_settings(broker_settings: Settings) -> Settings:
    """Last-seen batches reach PostgreSQL rarely here, so GET /devices is
    shown to answer from what the broker knows, not from a lucky flush."""
    return broker_settings.with_(last_seen_flush_s=30.0)




def parse_at(text: str) -> dt.datetime:
    at = dt.datetime.fromisoformat(text)
    assert at.tzinfo is not None, f"{text!r} has no time zone"
    return at


async def sent_ids(http: httpx.AsyncClient, account: Account, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = await send_sms(http, account.key, message=f"message {i}")
        assert r.status_code == 201, r.text
        ids.append(r.json()["data"]["id"])
    return ids


# --- GET /messages/{id} ------------------------------------------------------------


async def test_get_message_answers_the_envelope_with_history_oldest_first(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device("Pixel")
    p = await phone(device)
    before = dt.datetime.now(dt.UTC)
    mid = (await send_sms(http, account.key, recipient="+1 650-253-0000",
                          message="hello")).json()["data"]["id"]
    await p.expect("send")
    r = await http.get(f"/messages/{mid}", headers=account.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    data = body["data"]
    assert body == {"statusCode": 200, "data": {
        "id": mid, "recipient": "+16502530000", "message": "hello", "status": "dispatching",
        "device": {"id": device.id, "deviceName": "Pixel"}, "error": None,
        "createdAt": data["createdAt"], "history": data["history"]}}
    created = parse_at(data["createdAt"])
    assert before - dt.timedelta(seconds=1) <= created <= dt.datetime.now(dt.UTC)
    assert [h["status"] for h in data["history"]] == ["queued", "dispatching"]
    assert all(set(h) == {"status", "at"} for h in data["history"])
    assert parse_at(data["history"][0]["at"]) == created

    # Each report the phone makes appends to the history, in order.
    assert (await p.ask({"type": "ack", "id": mid}))["type"] == "receipt"
    assert (await p.ask({"type": "status", "id": mid, "status": "failed",
                         "error": "no signal"}))["type"] == "receipt"
    data = (await http.get(f"/messages/{mid}", headers=account.headers)).json()["data"]
    assert (data["status"], data["error"]) == ("failed", "no signal")
    assert [h["status"] for h in data["history"]] == ["queued", "dispatching", "sending", "failed"]
    ats = [parse_at(h["at"]) for h in data["history"]]
    assert ats == sorted(ats)


async def test_unknown_or_malformed_message_id_is_404(http: httpx.AsyncClient,
                                                      account: Account) -> None:
    for path in ["/messages/00000000-0000-0000-0000-000000000000", "/messages/not-a-uuid",
                 "/messages/12345"]:
        r = await http.get(path, headers=account.headers)
        assert (r.status_code, r.json()) == (404, error(404, "Message not found")), path


# --- GET /messages ------------------------------------------------------------------


async def test_list_is_newest_first_and_pages_cover_everything_once(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device("Pixel")
    await phone(device)
    ids = await sent_ids(http, account, 5)

    r = await http.get("/messages", headers=account.headers)
    body = r.json()
    assert r.status_code == 200
    # Each item with its error and createdAt (contract section 10).
    created = [m["createdAt"] for m in body["data"]]
    assert body == {"statusCode": 200, "data": [
        {"id": mid, "recipient": "+16502530000", "message": f"message {i}",
         "status": "dispatching", "device": {"id": device.id, "deviceName": "Pixel"},
         "error": None, "createdAt": at}
        for (i, mid), at in zip(reversed(list(enumerate(ids))), created, strict=True)]}
    assert created == sorted(created, reverse=True)  # no nextCursor above: it all fit

    pages: list[list[str]] = []
    params: dict[str, str] = {"limit": "2"}
    while True:
        r = await http.get("/messages", params=params, headers=account.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) <= {"statusCode", "data", "nextCursor"}
        pages.append([m["id"] for m in page["data"]])
        if "nextCursor" not in page:
            break
        assert isinstance(page["nextCursor"], str) and page["nextCursor"]
        params = {"limit": "2", "cursor": page["nextCursor"]}
        assert len(pages) < 10, "pagination does not end"
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]


async def test_last_full_page_has_no_next_cursor(http: httpx.AsyncClient, account: Account,
                                                 phone: PhoneFactory) -> None:
    await phone(await account.make_device())
    ids = await sent_ids(http, account, 4)
    first = (await http.get("/messages?limit=2", headers=account.headers)).json()
    second = (await http.get(f"/messages?limit=2&cursor={first['nextCursor']}",
                             headers=account.headers)).json()
    assert [m["id"] for m in first["data"] + second["data"]] == ids[::-1]
    assert "nextCursor" not in second


async def test_page_does_not_shift_when_new_messages_arrive(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    """Keyset, not offset: a message sent between two pages is not seen twice."""
    await phone(await account.make_device())
    ids = await sent_ids(http, account, 3)
    first = (await http.get("/messages?limit=2", headers=account.headers)).json()
    await sent_ids(http, account, 1)
    second = (await http.get(f"/messages?limit=2&cursor={first['nextCursor']}",
                             headers=account.headers)).json()
    assert [m["id"] for m in second["data"]] == [ids[0]]


async def test_status_filter(http: httpx.AsyncClient, account: Account,
                             phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    ids = await sent_ids(http, account, 3)
    for _ in ids:
        await p.expect("send")
    assert (await p.ask({"type": "ack", "id": ids[1]}))["status"] == "sending"

    async def listed(status: str) -> list[str]:
        r = await http.get("/messages", params={"status": status}, headers=account.headers)
        assert r.status_code == 200, r.text
        assert all(m["status"] == status for m in r.json()["data"])
        return [m["id"] for m in r.json()["data"]]
    assert await listed("sending") == [ids[1]]
    assert await listed("dispatching") == [ids[2], ids[0]]
    assert await listed("delivered") == []


STATUS_TEXT = "status must be one of queued, dispatching, sending, sent, delivered, failed"
LIMIT_TEXT = "limit must be an integer from 1 to 100"
CURSOR_TEXT = "cursor must be an integer from 1 to 4611686018427387904"


async def test_invalid_list_parameters_are_400(http: httpx.AsyncClient,
                                               account: Account) -> None:
    for query, text in [
        ("status=bogus", STATUS_TEXT), ("status=QUEUED", STATUS_TEXT),
        ("limit=0", LIMIT_TEXT), ("limit=101", LIMIT_TEXT), ("limit=-1", LIMIT_TEXT),
        ("limit=ten", LIMIT_TEXT), ("limit=1.5", LIMIT_TEXT),
        ("cursor=abc", CURSOR_TEXT), ("cursor=-5", CURSOR_TEXT), ("cursor=0", CURSOR_TEXT),
    ]:
        r = await http.get(f"/messages?{query}", headers=account.headers)
        assert (r.status_code, r.json()) == (400, error(400, text)), query


async def test_unicode_digits_in_list_parameters_are_400_not_500(
        http: httpx.AsyncClient, account: Account) -> None:
    """'²' passes str.isdigit() but is no integer: still the caller's 400."""
    for query, text in [("limit=%C2%B2", LIMIT_TEXT), ("cursor=%C2%B2", CURSOR_TEXT)]:
        r = await http.get(f"/messages?{query}", headers=account.headers)
        assert (r.status_code, r.json()) == (400, error(400, text)), query


# --- GET /devices -------------------------------------------------------------------


async def devices(http: httpx.AsyncClient, account: Account) -> dict[str, dict[str, Any]]:
    r = await http.get("/devices", headers=account.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"statusCode", "data"} and body["statusCode"] == 200
    return {d["id"]: d for d in body["data"]}


async def test_devices_show_presence_last_seen_and_health(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device("Pixel", send_rate=12)
    idle = await account.make_device("Drawer phone")
    listed = await devices(http, account)
    assert listed[idle.id] == {"id": idle.id, "deviceName": "Drawer phone", "online": False,
                               "lastSeen": None, "active": True, "sendRate": 30,
                               "health": None, "appVersion": None, "transport": "websocket"}

    health = {"battery": 81, "charging": True, "signal": 3}
    p = await phone(device, health=health)
    info = (await devices(http, account))[device.id]
    assert info == {"id": device.id, "deviceName": "Pixel", "online": True,
                    "lastSeen": info["lastSeen"], "active": True, "sendRate": 12,
                    "health": health, "appVersion": "test/1", "transport": "websocket"}
    seen = parse_at(info["lastSeen"])
    assert abs(dt.datetime.now(dt.UTC) - seen) < dt.timedelta(seconds=5)
    assert (await devices(http, account))[idle.id]["online"] is False

    await p.close()

    async def offline() -> bool:
        return (await devices(http, account))[device.id]["online"] is False
    await wait_for(offline, what="device shown offline after its socket closed")


async def test_last_seen_and_health_outlive_the_connection(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    """Once a phone goes away, GET /devices still says when it was last seen
    (and its last health), at once, not only after a last-seen flush."""
    device = await account.make_device()
    health = {"battery": 55}
    p = await phone(device, health=health)
    await p.ask({"type": "ping"})
    seen = parse_at((await devices(http, account))[device.id]["lastSeen"])
    await p.close()

    async def offline() -> bool:
        return (await devices(http, account))[device.id]["online"] is False
    await wait_for(offline, what="device shown offline after its socket closed")
    info = (await devices(http, account))[device.id]
    assert info["lastSeen"] is not None, info
    assert parse_at(info["lastSeen"]) >= seen
    assert (info["health"], info["appVersion"]) == (health, "test/1")


async def test_ping_health_updates_the_device_listing(http: httpx.AsyncClient, account: Account,
                                                      phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device, health={"battery": 90})
    assert (await devices(http, account))[device.id]["health"] == {"battery": 90}
    assert await p.ask({"type": "ping", "health": {"battery": 42, "signal": 1}}) == \
        {"type": "pong"}
    assert (await devices(http, account))[device.id]["health"] == {"battery": 42, "signal": 1}


async def test_deactivated_device_is_listed_inactive(http: httpx.AsyncClient, account: Account,
                                                     db: asyncpg.Connection) -> None:
    device = await account.make_device()
    await db.execute("UPDATE devices SET active = false WHERE id = $1::uuid", device.id)
    assert (await devices(http, account))[device.id]["active"] is False


# --- POST /devices ------------------------------------------------------------------


async def test_post_devices_returns_201_with_a_token_that_connects(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    r = await http.post("/devices", json={"name": "Galaxy A54", "sendRate": 20},
                        headers=account.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    data = body["data"]
    assert body == {"statusCode": 201, "data": {"id": data["id"], "deviceName": "Galaxy A54",
                                                "token": data["token"], "sendRate": 20}}
    assert data["token"].startswith("smsdev_")
    p = await phone(Device(id=data["id"], name="Galaxy A54", token=data["token"]))
    assert p.welcome["deviceId"] == data["id"]
    assert (await devices(http, account))[data["id"]]["online"] is True
    r = await send_sms(http, account.key)
    assert r.json()["data"]["device"] == {"id": data["id"], "deviceName": "Galaxy A54"}


async def test_post_devices_defaults_send_rate_to_30(http: httpx.AsyncClient,
                                                     account: Account) -> None:
    r = await http.post("/devices", json={"name": "Phone"}, headers=account.headers)
    assert r.status_code == 201, r.text
    assert r.json()["data"]["sendRate"] == 30


async def test_post_devices_validates_its_body(http: httpx.AsyncClient, account: Account,
                                               db: asyncpg.Connection) -> None:
    for payload, text in [
        ({}, "Missing field name"),
        ({"name": 5}, "name: expected str, got int"),
        ({"name": ""}, "name: expected str of length >= 1"),
        ({"name": "x", "sendRate": -1}, "sendRate: expected int >= 0"),
    ]:
        r = await http.post("/devices", json=payload, headers=account.headers)
        assert (r.status_code, r.json()) == (400, error(400, text)), payload
    r = await http.post("/devices", content=b"{", headers=account.headers)
    assert (r.status_code, r.json()) == (400, error(400, "Body must be a JSON object"))
    assert await db.fetchval("SELECT count(*) FROM devices") == 0


# --- isolation between accounts ------------------------------------------------------


async def test_accounts_never_see_each_others_messages_or_devices(
        http: httpx.AsyncClient, make_account: Any, phone: PhoneFactory) -> None:
    owner: Account = await make_account("owner@example.com")
    other: Account = await make_account("other@example.com")
    mine = await owner.make_device("Owner phone")
    theirs = await other.make_device("Other phone")
    await phone(mine)
    mid = (await send_sms(http, owner.key)).json()["data"]["id"]

    r = await http.get(f"/messages/{mid}", headers=other.headers)
    assert (r.status_code, r.json()) == (404, error(404, "Message not found"))
    r = await http.get("/messages", headers=other.headers)
    assert r.json() == {"statusCode": 200, "data": []}
    for status in ("dispatching", "queued"):
        r = await http.get(f"/messages?status={status}", headers=other.headers)
        assert r.json()["data"] == []
    assert list(await devices(http, other)) == [theirs.id]
    assert list(await devices(http, owner)) == [mine.id]

    # The owner's phone is online, but it is not the other account's to use.
    r = await send_sms(http, other.key)
    assert (r.status_code, r.json()) == (400, error(400, "No eligible device available"))

    # A cursor taken from the owner's listing leaks nothing either.
    await send_sms(http, owner.key)
    page = (await http.get("/messages?limit=1", headers=owner.headers)).json()
    r = await http.get(f"/messages?cursor={page['nextCursor']}", headers=other.headers)
    assert r.json()["data"] == []
