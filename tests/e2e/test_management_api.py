"""The management API end to end (contract section 10): keys, devices,
pairing codes, message filters and cancel, the account; every route's
errors (400, 401, 403, 404, 409), another account's ids as 404, and the
keyset pagination of every list. Real uvicorn, real phones of both
transports, real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import error
from tests.e2e.conftest import (
    Account,
    Device,
    DriverFactory,
    PhoneFactory,
    Server,
    get_message,
    send_sms,
    stored_history,
)
from tests.e2e.smsgate_app import API, APP_HEADERS

pytestmark = pytest.mark.timeout(30)

ISSUED = {"id", "key", "prefix", "name", "scopes", "rateLimit", "expiresAt"}
NOBODY = str(uuid.uuid4())
AccountFactory = Callable[[str], Awaitable[Account]]


async def pages(http: httpx.AsyncClient, account: Account, path: str, limit: int,
                **params: str) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following `nextCursor` until it is absent."""
    out: list[list[dict[str, Any]]] = []
    query: dict[str, Any] = {"limit": limit, **params}
    while True:
        r = await http.get(path, params=query, headers=account.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) <= {"statusCode", "data", "nextCursor"}, body
        out.append(body["data"])
        if "nextCursor" not in body:
            return out
        assert len(out) < 20, "pagination does not end"
        query = {**query, "cursor": body["nextCursor"]}


# --- keys -----------------------------------------------------------------------


async def test_keys_create_read_list_rotate_revoke(http: httpx.AsyncClient,
                                                   account: Account) -> None:
    before = dt.datetime.now(dt.UTC)
    r = await http.post("/keys", json={"name": "reader", "scopes": ["messages:read"],
                                       "rateLimit": 5, "expiresIn": 3600},
                        headers=account.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["statusCode"] == 201 and set(body["data"]) == ISSUED
    made = body["data"]
    assert (made["name"], made["scopes"], made["rateLimit"]) == ("reader", ["messages:read"], 5)
    assert made["key"].startswith(f"smsgw_{made['prefix']}_")
    expires = dt.datetime.fromisoformat(made["expiresAt"])
    assert before + dt.timedelta(seconds=3599) <= expires <= before + dt.timedelta(seconds=3610)
    reader = {"x-api-key": made["key"]}
    assert (await http.get("/messages", headers=reader)).status_code == 200
    r = await send_sms(http, made["key"])
    assert (r.status_code, r.json()) == (403, error(403, "Missing messages:send scope"))

    # Left out, the scopes are `messages:send`, as `smsdora keys create`.
    r = await http.post("/keys", json={}, headers=account.headers)
    assert r.status_code == 201 and r.json()["data"]["scopes"] == ["messages:send"]
    default = r.json()["data"]

    r = await http.get(f"/keys/{made['id']}", headers=account.headers)
    assert r.status_code == 200, r.text
    info = r.json()["data"]
    assert info == {"id": made["id"], "name": "reader", "prefix": made["prefix"],
                    "scopes": ["messages:read"], "rateLimit": 5,
                    "expiresAt": made["expiresAt"], "revoked": False,
                    "createdAt": info["createdAt"], "lastUsedAt": info["lastUsedAt"]}
    # Used above: its last use is written by the node's flush loop (every
    # 0.2 s here), so it may not be there yet; then it is, after the key's
    # creation.
    for _ in range(50):
        if info["lastUsedAt"] is not None:
            break
        await asyncio.sleep(0.1)
        info = (await http.get(f"/keys/{made['id']}", headers=account.headers)).json()["data"]
    assert dt.datetime.fromisoformat(info["lastUsedAt"]) >= dt.datetime.fromisoformat(
        info["createdAt"])

    # Listed oldest first, a page at a time, never with a secret.
    listed = await pages(http, account, "/keys", 1)
    assert [len(p) for p in listed] == [1, 1, 1]
    ids = [k["id"] for p in listed for k in p]
    assert ids[1:] == [made["id"], default["id"]]  # after the fixture's own key
    text = str(listed)
    assert made["key"] not in text and "key" not in {f for p in listed for k in p for f in k}
    assert [k["id"] for k in (await http.get("/keys", headers=account.headers)).json()["data"]
            ] == ids

    # Rotate: same id, name, scopes; the old secret stops at once.
    r = await http.post(f"/keys/{made['id']}/rotate", headers=account.headers)
    assert r.status_code == 200, r.text
    rotated = r.json()["data"]
    assert set(rotated) == ISSUED and rotated["key"] != made["key"]
    assert {k: v for k, v in rotated.items() if k not in ("key", "prefix")} == {
        k: v for k, v in made.items() if k not in ("key", "prefix")}
    r = await http.get("/messages", headers=reader)
    assert (r.status_code, r.json()) == (401, error(401, "Invalid API key"))
    assert (await http.get("/messages", headers={"x-api-key": rotated["key"]})).status_code == 200

    # Revoke: refused at once; again is the same answer.
    for _ in range(2):
        r = await http.post(f"/keys/{made['id']}/revoke", headers=account.headers)
        assert r.status_code == 200, r.text
        assert r.json()["data"] == {**info, "prefix": rotated["prefix"], "revoked": True}
    r = await http.get("/messages", headers={"x-api-key": rotated["key"]})
    assert (r.status_code, r.json()) == (401, error(401, "API key revoked"))


BAD_KEYS = [
    (b"{", "Body must be a JSON object"),
    (b"[]", "Expected object, got array"),
    (b'{"scopes": ["sms:everything"]}', "scopes[0]: invalid enum value 'sms:everything'"),
    (b'{"scopes": "messages:send"}', "scopes: expected array, got str"),
    (b'{"rateLimit": 0}', "rateLimit: expected int >= 1"),
    (b'{"expiresIn": -5}', "expiresIn: expected int >= 1"),
    (b'{"name": "' + b"n" * 101 + b'"}', "name: expected str of length <= 100"),
    (b'{"nmae": "typo"}', "Object contains unknown field nmae"),
]


async def test_a_bad_key_request_is_a_400_naming_the_field(http: httpx.AsyncClient,
                                                           account: Account) -> None:
    for body, message in BAD_KEYS:
        r = await http.post("/keys", content=body, headers=account.headers)
        assert (r.status_code, r.json()) == (400, error(400, message)), body
    r = await http.get("/keys", params={"limit": "0"}, headers=account.headers)
    assert (r.status_code, r.json()) == (400, error(400, "limit must be an integer from 1 to 100"))
    assert len((await http.get("/keys", headers=account.headers)).json()["data"]) == 1


# --- every route: who may call it --------------------------------------------------


# (scope, method, path, body) of every management route; `{id}` is a key's,
# a device's or a message's id, after the path's first segment.
ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("keys:write", "POST", "/keys", {}),
    ("keys:write", "GET", "/keys", None),
    ("keys:write", "GET", "/keys/{id}", None),
    ("keys:write", "POST", "/keys/{id}/revoke", None),
    ("keys:write", "POST", "/keys/{id}/rotate", None),
    ("devices:read", "GET", "/devices/{id}", None),
    ("devices:write", "PATCH", "/devices/{id}", {"name": "x"}),
    ("devices:write", "DELETE", "/devices/{id}", None),
    ("devices:write", "POST", "/devices/{id}/rotate-token", None),
    ("devices:write", "POST", "/devices/codes", None),
    ("messages:send", "POST", "/messages/{id}/cancel", None),
    ("messages:read", "GET", "/account", None),
]


async def test_every_route_wants_a_key_with_its_scope_and_hides_other_accounts(
        http: httpx.AsyncClient, account: Account, make_account: AccountFactory,
        phone: PhoneFactory) -> None:
    other = await make_account("other@example.com")
    device = await other.make_device("Theirs")
    await phone(device)
    mid = (await send_sms(http, other.key)).json()["data"]["id"]
    their_key = (await http.get("/keys", headers=other.headers)).json()["data"][0]["id"]
    theirs = {"keys": their_key, "devices": device.id, "messages": mid}
    register_only = await account.make_key(["devices:register"])
    for scope, method, template, body in ROUTES:
        their_id = theirs.get(template.split("/")[1], "")
        path = template.replace("{id}", their_id)
        what = f"{method} {template}"
        r = await http.request(method, path, json=body)
        assert (r.status_code, r.json()) == (401, error(401, "Invalid API key")), what
        r = await http.request(method, path, json=body, headers={"x-api-key": register_only})
        assert (r.status_code, r.json()) == (403, error(403, f"Missing {scope} scope")), what
        if "{id}" not in template:
            continue
        # Another account's id, an id nobody has, a segment that is no id:
        # all unknown here, whatever the route.
        for unknown in (their_id, NOBODY, "not-an-id"):
            r = await http.request(method, template.replace("{id}", unknown), json=body,
                                   headers=account.headers)
            assert r.status_code == 404, (what, unknown, r.text)
            assert r.json()["message"].endswith("not found"), (what, r.json())
    # Nothing of theirs was touched.
    assert (await get_message(http, other, mid))["status"] == "dispatching"
    r = await http.get(f"/devices/{device.id}", headers=other.headers)
    assert r.json()["data"]["deviceName"] == "Theirs" and r.json()["data"]["online"]
    assert (await http.get(f"/keys/{their_key}", headers=other.headers)).json()["data"][
        "revoked"] is False


# --- devices --------------------------------------------------------------------


async def test_device_read_rename_repace_deactivate_reactivate(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory, server: Server) -> None:
    device = await account.make_device("Pixel", send_rate=30)
    p = await phone(device)
    r = await http.get(f"/devices/{device.id}", headers=account.headers)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert (data["id"], data["deviceName"], data["online"], data["active"], data["sendRate"],
            data["transport"]) == (device.id, "Pixel", True, True, 30, "websocket")

    r = await http.patch(f"/devices/{device.id}", json={"name": "Office", "sendRate": 0},
                         headers=account.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["data"]["deviceName"], r.json()["data"]["sendRate"]) == ("Office", 0)
    # The connected phone's name follows at once in what a send answers.
    sent = await send_sms(http, account.key)
    assert sent.json()["data"]["device"] == {"id": device.id, "deviceName": "Office"}
    await p.expect("send")
    assert (await http.patch(f"/devices/{device.id}", json={},
                             headers=account.headers)).json()["data"]["deviceName"] == "Office"

    # Deactivated: the socket is closed (policy, 1008), the token refused.
    r = await http.patch(f"/devices/{device.id}", json={"active": False},
                         headers=account.headers)
    assert r.status_code == 200 and r.json()["data"]["active"] is False
    with pytest.raises(ConnectionClosed) as closed:
        await p.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.ws_url, additional_headers={
            "Authorization": f"Bearer {device.token}"}, open_timeout=5)
    assert refused.value.response.status_code == 401

    # Reactivated: the same token works again, within the plan's device limit.
    r = await http.patch(f"/devices/{device.id}", json={"active": True},
                         headers=account.headers)
    assert r.status_code == 200 and r.json()["data"]["active"] is True
    await phone(device)
    spare = await account.make_device("Spare")
    await http.patch(f"/devices/{spare.id}", json={"active": False}, headers=account.headers)
    await account.db.execute("UPDATE plans SET max_devices = 1 WHERE name = 'default'")
    r = await http.patch(f"/devices/{spare.id}", json={"active": True}, headers=account.headers)
    assert (r.status_code, r.json()) == (403, error(403, "Device limit reached"))


BAD_CHANGES: list[tuple[dict[str, Any], str]] = [
    ({"sendRate": -1}, "sendRate: expected int >= 0"),
    ({"name": ""}, "name: expected str of length >= 1"),
    ({"name": None}, "name: expected str, got null"),
    ({"active": "no"}, "active: expected bool, got str"),
    ({"send_rate": 5}, "Object contains unknown field send_rate"),
]


async def test_a_bad_device_change_is_a_400_and_changes_nothing(http: httpx.AsyncClient,
                                                                account: Account) -> None:
    device = await account.make_device("Pixel")
    for body, message in BAD_CHANGES:
        r = await http.patch(f"/devices/{device.id}", json=body, headers=account.headers)
        assert (r.status_code, r.json()) == (400, error(400, message)), body
    data = (await http.get(f"/devices/{device.id}", headers=account.headers)).json()["data"]
    assert (data["deviceName"], data["sendRate"], data["active"]) == ("Pixel", 30, True)


async def test_delete_a_device_that_never_worked_and_keep_one_that_did(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory, server: Server) -> None:
    unused = await account.make_device("Mistake")
    used = await account.make_device("Worker")
    await phone(used)
    mid = (await send_sms(http, account.key)).json()["data"]["id"]

    r = await http.delete(f"/devices/{unused.id}", headers=account.headers)
    assert r.status_code == 200 and r.json()["data"]["deviceName"] == "Mistake"
    r = await http.get(f"/devices/{unused.id}", headers=account.headers)
    assert (r.status_code, r.json()) == (404, error(404, "Device not found"))
    with pytest.raises(InvalidStatus):
        await connect(server.ws_url, additional_headers={
            "Authorization": f"Bearer {unused.token}"}, open_timeout=5)

    r = await http.delete(f"/devices/{used.id}", headers=account.headers)
    assert r.status_code == 409, r.text
    assert "deactivate it instead" in r.json()["message"]
    assert (await get_message(http, account, mid))["device"]["deviceName"] == "Worker"
    assert (await http.get(f"/devices/{used.id}", headers=account.headers)).json()["data"][
        "active"] is True


async def test_rotate_a_websocket_phones_token(http: httpx.AsyncClient, account: Account,
                                               phone: PhoneFactory, server: Server) -> None:
    device = await account.make_device("Pixel")
    p = await phone(device)
    r = await http.post(f"/devices/{device.id}/rotate-token", headers=account.headers)
    assert r.status_code == 200, r.text
    new = r.json()["data"]
    assert set(new) == {"id", "deviceName", "token"} and new["token"] != device.token
    with pytest.raises(ConnectionClosed):
        await p.recv()  # the connection made with the old token is dropped
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.ws_url, additional_headers={
            "Authorization": f"Bearer {device.token}"}, open_timeout=5)
    assert refused.value.response.status_code == 401
    await phone(Device(id=device.id, name=device.name, token=new["token"]))


async def test_a_pairing_code_registers_one_sms_gateway_phone_which_cannot_rotate(
        http: httpx.AsyncClient, account: Account, make_account: AccountFactory) -> None:
    r = await http.post("/devices/codes", headers=account.headers)
    assert r.status_code == 201, r.text
    code = r.json()["data"]
    assert set(code) == {"code", "validUntil", "serverUrl"} and len(code["code"]) == 6
    assert code["serverUrl"].endswith("/api/mobile/v1")
    valid_until = dt.datetime.fromisoformat(code["validUntil"])
    assert dt.timedelta(minutes=9) < valid_until - dt.datetime.now(dt.UTC) <= \
        dt.timedelta(minutes=10)

    async def register() -> httpx.Response:
        return await http.post(f"{API}/device", json={"name": "Galaxy"},
                               headers={**APP_HEADERS, "Authorization": f"Code {code['code']}"})

    r = await register()
    assert r.status_code == 201, r.text
    app_id = r.json()["id"]
    assert (await register()).status_code == 401  # single use
    data = (await http.get(f"/devices/{app_id}", headers=account.headers)).json()["data"]
    assert (data["deviceName"], data["transport"]) == ("Galaxy", "smsgate")

    r = await http.post(f"/devices/{app_id}/rotate-token", headers=account.headers)
    assert r.status_code == 409 and "SMS Gateway" in r.json()["message"]


async def test_devices_are_listed_a_page_at_a_time(http: httpx.AsyncClient,
                                                   account: Account) -> None:
    made = [(await account.make_device(f"Phone {i}")).id for i in range(5)]
    listed = await pages(http, account, "/devices", 2)
    assert [[d["id"] for d in p] for p in listed] == [made[0:2], made[2:4], made[4:]]
    r = await http.get("/devices", params={"cursor": "12_zz"}, headers=account.headers)
    assert (r.status_code, r.json()) == (
        400, error(400, "cursor must be the nextCursor of a previous page"))


# --- messages: filters and cancel ----------------------------------------------------


async def test_message_filters(http: httpx.AsyncClient, account: Account,
                               phone: PhoneFactory) -> None:
    one, two = await account.make_device("One"), await account.make_device("Two")
    p1 = await phone(one)
    first = (await send_sms(http, account.key, recipient="+16502530000")).json()["data"]["id"]
    await p1.expect("send")
    await p1.ask({"type": "ack", "id": first})
    await p1.ask({"type": "status", "id": first, "status": "failed", "error": "no signal"})
    middle = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.01)
    p2 = await phone(two)  # the freshest: the next send is its
    second = (await send_sms(http, account.key, recipient="+447911123456")).json()["data"]["id"]
    await p2.expect("send")

    async def ids(**params: str) -> list[str]:
        r = await http.get("/messages", params=params, headers=account.headers)
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()["data"]]

    assert await ids() == [second, first]
    assert await ids(device=one.id) == [first]
    assert await ids(device=two.id, status="dispatching") == [second]
    assert await ids(recipient="+1 650-253-0000") == [first]  # any form, compared in E.164
    assert await ids(since=middle.isoformat()) == [second]
    assert await ids(until=middle.isoformat().replace("+00:00", "Z")) == [first]
    assert await ids(status="failed", since="2000-01-01T00:00:00Z") == [first]
    assert await ids(device=NOBODY) == []
    item = (await http.get("/messages", params={"device": one.id},
                           headers=account.headers)).json()["data"][0]
    assert item["error"] == "no signal"
    assert item["createdAt"] == (await get_message(http, account, first))["createdAt"]

    for params, message in [
            ({"device": "one"}, "device must be an id"),
            ({"since": "yesterday"}, "since must be a date and time such as 2026-12-01T00:00:00Z"),
            ({"until": "2026-02-30T00:00:00Z"}, "until is not a valid date and time"),
            ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
             "since must be before until"),
            ({"recipient": "12"}, "Invalid phone number"),
            ({"status": "lost"}, "status must be one of queued, dispatching, sending, sent,"
                                 " delivered, failed")]:
        r = await http.get("/messages", params=params, headers=account.headers)
        assert (r.status_code, r.json()) == (400, error(400, message)), params


async def test_cancel_on_either_transport(http: httpx.AsyncClient, account: Account,
                                          driver: DriverFactory) -> None:
    """A job its phone has not taken yet: failed `cancelled`, and the phone
    told to drop it (`cancel` over WebSocket, `MessageCancelled` on the SMS
    Gateway app's stream). One it has taken cannot be cancelled: acked, or
    listed by an app that sends what it lists."""
    d = await driver(account, "Phone")
    mid = (await send_sms(http, account.key)).json()["data"]["id"]
    r = await http.post(f"/messages/{mid}/cancel", headers=account.headers)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data == await get_message(http, account, mid)
    assert (data["status"], data["error"]) == ("failed", "cancelled")
    assert [h["status"] for h in data["history"]] == ["queued", "dispatching", "failed"]
    assert await stored_history(account.db, mid) == ["queued", "dispatching", "failed"]
    reason = await d.expect_cancel(mid)
    assert reason in ("cancelled", None)  # `MessageCancelled` names no reason
    await d.ack_refused(mid)  # too late for the phone: no go-ahead
    assert (await get_message(http, account, mid))["status"] == "failed"
    r = await http.post(f"/messages/{mid}/cancel", headers=account.headers)
    assert (r.status_code, r.json()) == (409, error(409, "Message can no longer be cancelled"))

    taken = (await send_sms(http, account.key)).json()["data"]["id"]
    job = await d.next_job()
    while job.id == mid:  # the WebSocket phone's first `send`, still unread
        job = await d.next_job()
    assert job.id == taken
    if d.holds_listed_jobs:
        # Listed is held: the app may be sending it already.
        r = await http.post(f"/messages/{taken}/cancel", headers=account.headers)
        assert r.status_code == 409, r.text
    await d.ack(taken)
    r = await http.post(f"/messages/{taken}/cancel", headers=account.headers)
    assert (r.status_code, r.json()) == (409, error(409, "Message can no longer be cancelled"))
    await d.report(taken, "delivered")
    assert (await get_message(http, account, taken))["status"] == "delivered"


async def test_a_cancel_and_an_ack_at_once_never_both_win(http: httpx.AsyncClient,
                                                          account: Account,
                                                          phone: PhoneFactory) -> None:
    """The cancel's guarded UPDATE against the ack's locked batch: whichever
    commits first, the other is refused, and the history agrees."""
    p = await phone(await account.make_device("Racer", send_rate=0))
    for _ in range(8):
        mid = (await send_sms(http, account.key)).json()["data"]["id"]
        assert (await p.expect("send"))["id"] == mid
        await p.send({"type": "ack", "id": mid})
        r = await http.post(f"/messages/{mid}/cancel", headers=account.headers)
        answer = await p.recv()
        assert answer["id"] == mid, answer
        history = await stored_history(account.db, mid)
        if r.status_code == 200:
            assert answer == {"type": "cancel", "id": mid, "reason": "cancelled"}, answer
            assert history == ["queued", "dispatching", "failed"]
        else:
            assert r.status_code == 409, r.text
            assert answer == {"type": "receipt", "id": mid, "status": "sending"}, answer
            assert history == ["queued", "dispatching", "sending"]
        if r.status_code == 200:
            # The broker's own `cancel` after its commit (the ack's answer was one too).
            extra = await p.recv()
            assert extra == {"type": "cancel", "id": mid, "reason": "cancelled"}, extra


async def test_cancel_a_message_waiting_for_a_phone(http: httpx.AsyncClient,
                                                    account: Account) -> None:
    """Its history row is what any other failure's is: a `message.failed`
    event in the outbox, from the trigger on message_history (CONTRACT
    section 9), in the cancel's own transaction."""
    await account.db.execute(
        "INSERT INTO webhooks (id, account_id, url, events, secret)"
        " VALUES ($1, $2, 'https://example.invalid/hook', ARRAY['message.failed'], 'whsec_x')",
        uuid.uuid4(), account.id)
    r = await send_sms(http, account.key, ttl=600)
    assert r.status_code == 201 and r.json()["data"]["status"] == "queued", r.text
    mid = r.json()["data"]["id"]
    r = await http.post(f"/messages/{mid}/cancel", headers=account.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["data"]["status"], r.json()["data"]["error"]) == ("failed", "cancelled")
    assert await stored_history(account.db, mid) == ["queued", "failed"]
    events = await account.db.fetch(
        "SELECT type, data FROM webhook_events WHERE message_id = $1", uuid.UUID(mid))
    data = [json.loads(e["data"]) for e in events]
    assert [(e["type"], d["status"], d["error"]) for e, d in zip(events, data, strict=True)
            ] == [("message.failed", "failed", "cancelled")]
    r = await http.post(f"/messages/{NOBODY}/cancel", headers=account.headers)
    assert (r.status_code, r.json()) == (404, error(404, "Message not found"))


# --- the account ----------------------------------------------------------------


async def test_account_shows_its_plan_usage_and_devices(http: httpx.AsyncClient,
                                                        account: Account,
                                                        phone: PhoneFactory) -> None:
    await phone(await account.make_device("Pixel"))
    await account.make_device("Idle")
    for _ in range(3):
        assert (await send_sms(http, account.key)).status_code == 201
    reader = await account.make_key(["messages:read"])
    r = await http.get("/account", headers={"x-api-key": reader})
    assert r.status_code == 200, r.text
    plan = await account.db.fetchrow("SELECT * FROM plans WHERE name = 'default'")
    assert r.json() == {"statusCode": 200, "data": {
        "id": str(account.id), "email": account.email,
        "plan": {"name": "default", "monthlyMessages": plan["monthly_messages"],
                 "maxDevices": plan["max_devices"]},
        "usage": {"month": dt.datetime.now(dt.UTC).strftime("%Y-%m"), "messages": 3,
                  "limit": plan["monthly_messages"]},
        "devices": {"active": 2, "limit": plan["max_devices"]}}}
