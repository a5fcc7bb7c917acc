"""Inbound SMS from both transports (issue 12 item 2; CONTRACT sections 4, 8,
9): a WebSocket phone's `incoming` frame, the SMS Gateway app's signed
`sms:received` webhook, each stored once per (device, the phone's id), a
`message.received` outbox row for each new one, and `GET /inbox`."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from broker import keys
from broker.device_sim import AppSim, DeviceSim
from tests.conftest import error
from tests.e2e.conftest import SECRET, Account, Device, PhoneFactory, Server

pytestmark = pytest.mark.timeout(30)

API = "/api/mobile/v1"
AT = "2026-12-01T10:15:30.250+01:00"


async def subscribe(db: asyncpg.Connection, account: Account) -> None:
    """A webhook endpoint of the account for every event, written directly."""
    await db.execute("INSERT INTO webhooks (id, account_id, url, events, secret)"
                     " VALUES ($1, $2, 'https://example.com/h', ARRAY['*'], 'whsec_x')",
                     uuid.uuid4(), account.id)


async def inbox_rows(db: asyncpg.Connection, device_id: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM inbox WHERE device_id = $1 ORDER BY seq",
                          uuid.UUID(device_id))


async def received_events(db: asyncpg.Connection, account: Account) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT type, message_id, data, occurred_at FROM webhook_events"
                          " WHERE account_id = $1 AND type = 'message.received' ORDER BY seq",
                          account.id)
    # The test's connection has no jsonb codec: `data` comes as its text.
    return [{**dict(r), "data": json.loads(r["data"])} for r in rows]


def incoming(phone_id: str = "sms-1", **extra: Any) -> dict[str, Any]:
    return {"type": "incoming", "id": phone_id, "sender": "+212600000001",
            "message": "Hello broker", "receivedAt": AT, **extra}


async def inbox(http: httpx.AsyncClient, key: str, **query: str) -> httpx.Response:
    return await http.get("/inbox", params=query, headers={"x-api-key": key})


# --- our WebSocket protocol -------------------------------------------------------------


async def test_an_incoming_sms_is_stored_then_receipted_once_per_phone_id(
        db: asyncpg.Connection, http: httpx.AsyncClient, account: Account,
        phone: PhoneFactory) -> None:
    await subscribe(db, account)
    device = await account.make_device("Pixel 8")
    p = await phone(device)
    receipt = await p.ask(incoming(sim=2))
    assert receipt == {"type": "receipt", "id": "sms-1", "status": "received"}
    # The receipt came after the commit: the row and its event are there now.
    [row] = await inbox_rows(db, device.id)
    assert (row["phone_id"], row["sender"], row["body"], row["sim"]) == (
        "sms-1", "+212600000001", "Hello broker", 2)
    assert row["received_at"] == dt.datetime.fromisoformat(AT)
    [event] = await received_events(db, account)
    assert event["message_id"] is None and event["occurred_at"] == row["created_at"]
    # The same SMS again (a reconnect, a retry): receipted, stored once, one event.
    assert await p.ask(incoming(message="changed?")) == receipt
    p2 = await phone(device)  # a reconnect
    assert await p2.ask(incoming()) == receipt
    assert len(await inbox_rows(db, device.id)) == 1
    assert len(await received_events(db, account)) == 1
    # The event's data is the GET /inbox item, exactly.
    page = await inbox(http, account.key)
    assert page.status_code == 200
    [item] = page.json()["data"]
    assert event["data"] == item
    assert item == {"id": str(row["id"]), "sender": "+212600000001", "message": "Hello broker",
                    "receivedAt": "2026-12-01T09:15:30.250+00:00",
                    "createdAt": item["createdAt"],
                    "device": {"id": device.id, "deviceName": "Pixel 8"}}
    assert dt.datetime.fromisoformat(item["createdAt"]) == row["created_at"].replace(
        microsecond=row["created_at"].microsecond // 1000 * 1000)


async def test_receipts_keep_the_order_of_the_frames(db: asyncpg.Connection, account: Account,
                                                    phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device)
    for i in range(20):
        await p.send(incoming(f"sms-{i}", sender=f"Bank{i}"))
    got = [(await p.expect("receipt"))["id"] for _ in range(20)]
    assert got == [f"sms-{i}" for i in range(20)]
    assert len(await inbox_rows(db, device.id)) == 20


BAD_INCOMING: list[tuple[dict[str, Any], str]] = [
    ({"sender": None}, "sender"),  # left out
    ({"sender": ""}, "sender"),
    ({"receivedAt": "2026-12-01T10:15:30"}, "timezone"),  # no offset: when was that?
    ({"receivedAt": "yesterday"}, "receivedAt"),
    ({"message": "nul \u0000 inside"}, "message"),
    ({"id": ""}, "id"),
    ({"sim": 0}, "sim"),
    ({"message": 42}, "message"),
]


async def test_a_bad_incoming_frame_is_a_bad_frame_error_and_the_socket_stays(
        db: asyncpg.Connection, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device)
    for frame, detail in BAD_INCOMING:
        sent = {k: v for k, v in incoming(**frame).items() if v is not None}
        answer = await p.ask(sent)
        assert answer["type"] == "error" and answer["code"] == "bad_frame", (frame, answer)
        assert detail in answer["detail"], (frame, answer)
        assert await p.ask({"type": "ping"}) == {"type": "pong"}
    assert await inbox_rows(db, device.id) == []


async def test_an_incoming_before_hello_is_hello_first(account: Account,
                                                       phone: PhoneFactory) -> None:
    p = await phone(await account.make_device(), hello=False)
    answer = await p.ask(incoming())
    assert answer["code"] == "hello_first"


# --- the SMS Gateway app -----------------------------------------------------------------


def signed(key: str, body: bytes, stamp: int | None = None) -> dict[str, str]:
    """The app's headers (SMSGATE.md 8.1), computed here from the recipe."""
    ts = str(int(time.time()) if stamp is None else stamp)
    mac = hmac.new(key.encode(), body + ts.encode(), hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "User-Agent": "me.capcom.smsgateway/1.68.0",
            "X-Timestamp": ts, "X-Signature": mac}


def webhook_body(device_id: str, message_id: str = "1a2b3c4d", envelope: str = "env-1",
                 **payload: Any) -> bytes:
    sms = {"messageId": message_id, "message": "Votre code: 1234", "sender": "MyBank",
           "phoneNumber": "MyBank", "simNumber": 1,
           "receivedAt": "2026-12-01T16:49:17.357+07:00", **payload}
    return json.dumps({"id": envelope, "webhookId": "smsdora-sms-received",
                       "event": "sms:received", "deviceId": device_id,
                       "payload": sms}).encode()


async def app_phone(http: httpx.AsyncClient, account: Account) -> tuple[str, str, str, str]:
    """A registered app: (device id, token, signing key, inbound URL)."""
    r = await http.post(f"{API}/device", json={"name": "samsung/beyond1", "simCards": []},
                        headers={"Authorization": f"Bearer {account.key}"})
    assert r.status_code == 201, r.text
    dev = r.json()
    bearer = {"Authorization": f"Bearer {dev['token']}"}
    settings = (await http.get(f"{API}/settings", headers=bearer)).json()
    [hook] = (await http.get(f"{API}/webhooks", headers=bearer)).json()
    return dev["id"], dev["token"], settings["webhooks"]["signing_key"], hook["url"]


async def test_get_webhooks_lists_the_brokers_url_at_the_base_the_app_called(
        http: httpx.AsyncClient, server: Server, account: Account) -> None:
    device_id, token, _, url = await app_phone(http, account)
    assert url == f"{server.url}{API}/inbound/{device_id}"
    bearer = {"Authorization": f"Bearer {token}"}
    # The other mount, a trailing slash typed by the user, a Host the app used.
    [alt] = (await http.get("/mobile/v1//webhooks", headers=bearer)).json()
    assert alt == {"id": "smsdora-sms-received", "url": f"{server.url}/mobile/v1/inbound/"
                   f"{device_id}", "event": "sms:received", "deviceId": device_id}
    [named] = (await http.get(f"{API}/webhooks", headers={
        **bearer, "Host": "sms.example.com:8443", "X-Forwarded-Proto": "https"})).json()
    # X-Forwarded-Proto is believed only from SMSDORA_TRUSTED_PROXIES (none here).
    assert named["url"] == f"http://sms.example.com:8443{API}/inbound/{device_id}"


async def test_a_signed_sms_received_webhook_is_stored_once_and_fires_one_event(
        db: asyncpg.Connection, http: httpx.AsyncClient, account: Account) -> None:
    await subscribe(db, account)
    device_id, _, key, url = await app_phone(http, account)
    body = webhook_body(device_id)
    r = await http.post(url, content=body, headers=signed(key, body))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    [row] = await inbox_rows(db, device_id)  # committed before the 2xx
    assert (row["sender"], row["body"], row["sim"]) == ("MyBank", "Votre code: 1234", 1)
    assert row["received_at"] == dt.datetime.fromisoformat("2026-12-01T16:49:17.357+07:00")
    # The app's retry, and its duplicate delivery (same messageId, another id).
    again = webhook_body(device_id, envelope="env-2")
    for attempt in (body, again):
        assert (await http.post(url, content=attempt, headers=signed(key, attempt))
                ).status_code == 200
    assert len(await inbox_rows(db, device_id)) == 1
    [event] = await received_events(db, account)
    [item] = (await inbox(http, account.key)).json()["data"]
    assert event["data"] == item and item["sender"] == "MyBank"
    assert item["receivedAt"] == "2026-12-01T09:49:17.357+00:00"
    # Another SMS whose 32-bit hash collides, at another time: a second row.
    other = webhook_body(device_id, receivedAt="2026-12-01T16:50:00.000+07:00")
    assert (await http.post(url, content=other, headers=signed(key, other))).status_code == 200
    assert len(await inbox_rows(db, device_id)) == 2


async def test_forged_stale_and_unsigned_webhooks_are_refused_401(
        db: asyncpg.Connection, http: httpx.AsyncClient, account: Account) -> None:
    device_id, _, key, url = await app_phone(http, account)
    body = webhook_body(device_id)
    forged = signed("not-the-key", body)
    r = await http.post(url, content=body, headers=forged)
    assert (r.status_code, r.json()) == (401, error(401, "Invalid X-Signature"))
    stale_at = int(time.time()) - 301
    r = await http.post(url, content=body, headers=signed(key, body, stale_at))
    assert r.status_code == 401 and r.json()["message"].startswith("Stale X-Timestamp")
    future = await http.post(url, content=body, headers=signed(key, body, int(time.time()) + 400))
    assert future.status_code == 401
    r = await http.post(url, content=body, headers={"Content-Type": "application/json"})
    assert r.json() == error(401, "Missing X-Signature or X-Timestamp")
    # A body changed after signing, and a key of another device.
    tampered = body.replace(b"1234", b"9999")
    assert (await http.post(url, content=tampered, headers=signed(key, body))).status_code == 401
    other_key = keys.signing_key(SECRET, str(uuid.uuid4()))
    assert (await http.post(url, content=body, headers=signed(other_key, body))
            ).status_code == 401
    # Non-ASCII and odd signatures are refused, never a 500.
    for odd in ("ü".encode() * 32, b"zz", signed(key, body)["X-Signature"].encode() + b" x"):
        weird = {**signed(key, body), "X-Signature": odd}
        assert (await http.post(url, content=body, headers=weird)).status_code == 401, odd
    assert await inbox_rows(db, device_id) == []


MALFORMED: list[bytes] = [
    b"not json", b"[]", b'{"event":"sms:received"}',
    b'{"event":"sms:sent","payload":{"messageId":"x","receivedAt":"2026-12-01T00:00:00Z"}}',
    b'{"event":"sms:received","payload":{"messageId":"x","receivedAt":"soon","sender":"a"}}',
    b'{"event":"sms:received","payload":{"messageId":"x","receivedAt":"2026-12-01T00:00:00Z"}}',
    b'{"event":"sms:received","payload":{"messageId":"x","receivedAt":"2026-12-01T00:00:00Z",'
    b'"sender":"a","message":"\\u0000"}}',
    b"[" * 5000,
    "\u00e9".encode("latin-1"),
]


async def test_a_signed_but_malformed_webhook_is_a_400(http: httpx.AsyncClient,
                                                      account: Account) -> None:
    _, _, key, url = await app_phone(http, account)
    for body in MALFORMED:
        r = await http.post(url, content=body, headers=signed(key, body))
        assert r.status_code == 400, (body[:80], r.text)
        assert r.json()["error"] == "Bad Request"


async def test_the_inbound_url_of_an_unknown_or_deactivated_device_is_refused(
        db: asyncpg.Connection, http: httpx.AsyncClient, account: Account) -> None:
    device_id, _, key, url = await app_phone(http, account)
    await db.execute("UPDATE devices SET active = false WHERE id = $1", uuid.UUID(device_id))
    body = webhook_body(device_id)
    assert (await http.post(url, content=body, headers=signed(key, body))).status_code == 401
    assert (await http.post(f"{API}/inbound/not-an-id", content=body,
                            headers=signed(key, body))).status_code == 404
    big = webhook_body(device_id, message="x" * 70_000)
    assert (await http.post(url, content=big, headers=signed(key, big))).status_code == 413


# --- GET /inbox ----------------------------------------------------------------------------


async def _three_sms(db: asyncpg.Connection, account: Account, phone: PhoneFactory
                     ) -> tuple[Device, Device]:
    a, b = await account.make_device("A"), await account.make_device("B")
    pa, pb = await phone(a), await phone(b)
    assert (await pa.ask(incoming("1", sender="MyBank")))["status"] == "received"
    assert (await pb.ask(incoming("1", sender="+15550001")))["status"] == "received"
    assert (await pa.ask(incoming("2", sender="+15550001")))["status"] == "received"
    return a, b


async def test_get_inbox_filters_paginates_and_stays_in_its_account(
        db: asyncpg.Connection, http: httpx.AsyncClient, account: Account,
        make_account: Any, phone: PhoneFactory) -> None:
    a, b = await _three_sms(db, account, phone)
    page = (await inbox(http, account.key)).json()
    assert [(i["device"]["deviceName"], i["sender"]) for i in page["data"]] == [
        ("A", "+15550001"), ("B", "+15550001"), ("A", "MyBank")]  # newest first
    assert "nextCursor" not in page
    by_device = (await inbox(http, account.key, device=a.id)).json()["data"]
    assert [i["sender"] for i in by_device] == ["+15550001", "MyBank"]
    by_sender = (await inbox(http, account.key, sender="+15550001")).json()["data"]
    assert [i["device"]["id"] for i in by_sender] == [a.id, b.id]
    first = (await inbox(http, account.key, limit="2")).json()
    second = (await inbox(http, account.key, limit="2", cursor=first["nextCursor"])).json()
    assert [i["id"] for i in first["data"] + second["data"]] == [i["id"] for i in page["data"]]
    assert "nextCursor" not in second
    # Another account sees nothing of it, even by this account's device id.
    other = await make_account("other@example.com")
    assert (await inbox(http, other.key)).json()["data"] == []
    assert (await inbox(http, other.key, device=a.id)).json()["data"] == []


async def test_get_inbox_checks_its_scope_and_parameters(http: httpx.AsyncClient,
                                                        account: Account) -> None:
    reader = await account.make_key(["messages:read"])
    sender_only = await account.make_key(["messages:send"])
    assert (await inbox(http, reader)).status_code == 200
    r = await inbox(http, sender_only)
    assert (r.status_code, r.json()) == (403, error(403, "Missing messages:read scope"))
    assert (await inbox(http, "smsgw_00000000_" + "x" * 40)).status_code == 401
    for query in ({"device": "nope"}, {"limit": "0"}, {"limit": "101"}, {"cursor": "x"},
                  {"sender": "s" * 129}):
        r = await inbox(http, reader, **query)
        assert r.status_code == 400, query
    listed = (await http.get("/openapi.json")).json()["paths"]["/inbox"]["get"]
    assert {p["name"] for p in listed["parameters"]} == {"device", "sender", "limit", "cursor"}


# --- device-sim ------------------------------------------------------------------------------


async def test_device_sim_ws_injects_an_sms_and_forgets_it_at_its_receipt(
        db: asyncpg.Connection, server: Server, account: Account) -> None:
    device = await account.make_device()
    read_end, write_end = os.pipe()
    sim = DeviceSim(server.url, device.token, commands=read_end)
    task = asyncio.get_running_loop().create_task(sim.run())
    try:
        await sim.wait_until(lambda: sim.connected and sim.phone.device_id is not None)
        sms_id = await sim.receive_sms("MyBank", "Solde: 12 EUR", sim=1)
        await sim.wait_until(lambda: sms_id in sim.phone.stored)
        assert sim.phone.inbox == {}
        # An `sms` command typed into its console (here a pipe).
        os.write(write_end, b"sms +15550002 typed in the terminal\n")
        await sim.wait_until(lambda: len(sim.phone.stored) == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        os.close(write_end)
        os.close(read_end)
    rows = await inbox_rows(db, device.id)
    assert [(r["sender"], r["body"]) for r in rows] == [
        ("MyBank", "Solde: 12 EUR"), ("+15550002", "typed in the terminal")]


async def test_device_sim_smsgate_posts_the_signed_webhook_from_get_webhooks(
        db: asyncpg.Connection, server: Server, account: Account) -> None:
    sim = AppSim(server.url, key=account.key, commands=None)
    task = asyncio.get_running_loop().create_task(sim.run())
    try:
        await sim.wait_until(lambda: sim.connected and bool(sim.phone.webhooks)
                             and "webhooks" in sim.phone.settings)
        [_forward] = await sim.receive_sms("+33600000000", "Rendez-vous demain", sim=1)
        await sim.wait_until(lambda: not sim.phone.forwards)
        assert len(sim.phone.forwarded) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sim.device_id is not None
    [row] = await inbox_rows(db, sim.device_id)
    assert (row["sender"], row["body"], row["sim"]) == ("+33600000000", "Rendez-vous demain", 1)


async def test_get_inbox_lists_the_app_phone_and_ws_phone_alike(
        db: asyncpg.Connection, http: httpx.AsyncClient, account: Account,
        phone: PhoneFactory) -> None:
    device_id, _, key, url = await app_phone(http, account)
    body = webhook_body(device_id)
    assert (await http.post(url, content=body, headers=signed(key, body))).status_code == 200
    ws_device = await account.make_device("WS")
    p = await phone(ws_device)
    await p.ask(incoming())
    items = (await inbox(http, account.key)).json()["data"]
    assert {i["device"]["id"] for i in items} == {device_id, ws_device.id}


async def test_smsdora_device_sim_takes_an_sms_typed_into_its_stdin(
        db: asyncpg.Connection, server: Server, account: Account) -> None:
    """The command a developer runs: `smsdora device-sim`, a line on its stdin."""
    device = await account.make_device()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSDORA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "device-sim", "--url", server.url,
        env={**env, "SMSDORA_DEVICE_TOKEN": device.token}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = b""
        while b"connected" not in seen:
            seen += await asyncio.wait_for(proc.stdout.readline(), 10)
        proc.stdin.write(b"sms MyBank Solde: 12 EUR\nhelp\n")
        await proc.stdin.drain()
        while b"stored" not in seen:
            seen += await asyncio.wait_for(proc.stdout.readline(), 10)
        assert b"type `sms SENDER TEXT`" in seen
    finally:
        proc.terminate()
        await proc.wait()
    [row] = await inbox_rows(db, device.id)
    assert (row["sender"], row["body"]) == ("MyBank", "Solde: 12 EUR")
