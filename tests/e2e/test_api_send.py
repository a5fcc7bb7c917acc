"""POST /messages/send end to end (contract section 3): the 201 body, every
400 of the error table, bodies over 64 KiB, and Idempotency-Key.

Real uvicorn, real PostgreSQL, real WebSocket phones; every error is asserted
as the whole `{"statusCode", "message", "error"}` body."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from broker import store
from tests.conftest import error
from tests.e2e.conftest import Account, PhoneFactory, send_sms, wait_for

pytestmark = pytest.mark.timeout(20)

MAX_BODY = 64 * 1024




async def count_messages(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM messages"))


async def post_raw(http: httpx.AsyncClient, key: str, content: Any,
                   content_type: str | None = "application/json",
                   **headers: str) -> httpx.Response:
    h = {"x-api-key": key, **headers}
    if content_type is not None:
        h["content-type"] = content_type
    return await http.post("/messages/send", content=content, headers=h)


# --- 201 ---------------------------------------------------------------------


async def test_send_answers_201_exactly_and_job_reaches_the_phone(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    device = await account.make_device("My Samsung S24")
    p = await phone(device)
    r = await send_sms(http, account.key, recipient="+1 650-253-0000", message="Your code is 4829")
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    mid = body["data"]["id"]
    assert body == {"statusCode": 201, "message": "SMS queued for delivery", "data": {
        "id": mid, "recipient": "+16502530000", "message": "Your code is 4829",
        "status": "dispatching", "device": {"id": device.id, "deviceName": "My Samsung S24"}}}
    # "The response is sent once the row is committed and the job frame is
    # written to that device's socket": both are there as the response lands.
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1::uuid", mid) == \
        "dispatching"
    assert await p.recv(timeout=1.0) == {"type": "send", "id": mid, "recipient": "+16502530000",
                                         "message": "Your code is 4829"}


async def test_recipient_is_stored_and_returned_in_e164(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    r = await send_sms(http, account.key, recipient="+212 6 00 00 00 00")
    assert r.status_code == 201, r.text
    assert r.json()["data"]["recipient"] == "+212600000000"
    assert (await p.expect("send"))["recipient"] == "+212600000000"
    assert await db.fetchval("SELECT recipient FROM messages") == "+212600000000"


# --- 400 No eligible device -------------------------------------------------------


async def test_no_device_at_all_is_400(http: httpx.AsyncClient, account: Account,
                                       db: asyncpg.Connection) -> None:
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (400, error(400, "No eligible device available"))
    assert await count_messages(db) == 0


async def test_registered_but_unconnected_device_is_400(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection) -> None:
    await account.make_device("Offline phone")
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (400, error(400, "No eligible device available"))
    assert await count_messages(db) == 0


async def test_device_that_disconnected_is_no_longer_eligible(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    device = await account.make_device()
    p = await phone(device)
    assert (await send_sms(http, account.key)).status_code == 201
    await p.close()

    async def offline() -> bool:
        r = await http.get("/devices", headers=account.headers)
        return r.json()["data"][0]["online"] is False
    await wait_for(offline, what="device offline")
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (400, error(400, "No eligible device available"))


async def test_deactivated_device_cannot_come_online_so_send_is_400(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    device = await account.make_device()
    assert await store.deactivate_device(db, uuid.UUID(device.id))
    with pytest.raises(InvalidStatus) as refused:
        await phone(device)
    assert refused.value.response.status_code == 401
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (400, error(400, "No eligible device available"))
    assert await count_messages(db) == 0


async def test_device_deactivated_while_connected_gets_no_new_jobs(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """"Of the account's devices that are active and connected now": turning a
    phone off with `devices deactivate` (which works while `serve` runs) takes
    it out of the pick even if its socket is still open."""
    device = await account.make_device()
    p = await phone(device)
    assert await store.deactivate_device(db, uuid.UUID(device.id))
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (400, error(400, "No eligible device available"))
    assert await count_messages(db) == 0
    # No job reached the phone: its socket closes (1008, deactivated) with no
    # `send` frame before the close.
    with pytest.raises(websockets.ConnectionClosed) as closed:
        frame = await asyncio.wait_for(p.ws.recv(), 5)
        raise AssertionError(f"unexpected frame {frame!r}")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


# --- 400 Invalid phone number ----------------------------------------------------
# The tables below run in one server each (a server costs ~0.25 s); every
# assertion names its case.

INVALID_RECIPIENTS = [
    "+1234567890",        # the contract's own example: phonenumbers finds it invalid
    "garbage",
    "6502530000",         # no + and no region to guess from
    "",
    "+1 650-253-0000 ext",
    "+" + "1" * 70,       # far longer than any number
]


async def test_invalid_recipient_is_400(http: httpx.AsyncClient, account: Account,
                                        phone: PhoneFactory, db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    for recipient in INVALID_RECIPIENTS:
        r = await send_sms(http, account.key, recipient=recipient)
        assert (r.status_code, r.json()) == (400, error(400, "Invalid phone number")), recipient
    assert await count_messages(db) == 0
    await p.nothing(0.05)


# --- 400 Message must be 1-1600 characters -----------------------------------------


async def test_message_length_out_of_range_is_400(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    for message in ["", "x" * 1601, "é" * 1601, "字" * 1601, "😀" * 1601]:
        r = await send_sms(http, account.key, message=message)
        assert (r.status_code, r.json()) == \
            (400, error(400, "Message must be 1-1600 characters")), message[:3]
    assert await count_messages(db) == 0
    await p.nothing(0.05)


async def test_message_of_1_to_1600_characters_is_accepted(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    """Characters, not bytes: 1600 'é' are 3200 UTF-8 bytes and still fit."""
    p = await phone(await account.make_device(send_rate=0))
    for message in ["x", "x" * 1600, "é" * 1600, "字" * 1600, "😀" * 1600]:
        r = await send_sms(http, account.key, message=message)
        assert r.status_code == 201, (message[:3], r.text)
        assert r.json()["data"]["message"] == message
        assert (await p.expect("send"))["message"] == message


# --- 400 body, fields, ttl ------------------------------------------------------


async def test_body_that_is_not_json_is_400(http: httpx.AsyncClient, account: Account,
                                            phone: PhoneFactory, db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    for content in [b"", b"not json", b'{"recipient": "+16502530000",', b"\xff\xfe{}",
                    b"recipient=%2B16502530000&message=hi"]:
        r = await post_raw(http, account.key, content)
        assert (r.status_code, r.json()) == (400, error(400, "Body must be a JSON object")), \
            content
    assert await count_messages(db) == 0


async def test_valid_json_is_accepted_whatever_its_content_type(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    body = json.dumps({"recipient": "+16502530000", "message": "hi"}).encode()
    for content_type in [None, "text/plain", "application/x-www-form-urlencoded",
                         "application/json; charset=utf-8"]:
        r = await post_raw(http, account.key, body, content_type=content_type)
        assert r.status_code == 201, (content_type, r.text)
        assert (await p.expect("send"))["id"] == r.json()["data"]["id"]


FIELD_ERRORS: list[tuple[Any, str]] = [
    ({"message": "hi"}, "Missing field recipient"),
    ({"recipient": "+16502530000"}, "Missing field message"),
    ({}, "Missing field recipient"),
    ({"recipient": 16502530000, "message": "hi"}, "recipient: expected str, got int"),
    ({"recipient": "+16502530000", "message": None}, "message: expected str, got null"),
    ({"recipient": "+16502530000", "message": ["hi"]}, "message: expected str, got array"),
    ([{"recipient": "+16502530000", "message": "hi"}], "Expected object, got array"),
    ("+16502530000", "Expected object, got str"),
]


async def test_missing_or_mistyped_field_is_400_with_a_specific_text(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    for payload, text in FIELD_ERRORS:
        r = await http.post("/messages/send", json=payload, headers=account.headers)
        assert (r.status_code, r.json()) == (400, error(400, text)), payload
    assert await count_messages(db) == 0


TTL_ERRORS: list[tuple[Any, str]] = [
    (0, "ttl: expected int >= 1"),
    (-5, "ttl: expected int >= 1"),
    ("60", "ttl: expected int | null, got str"),
    (1.5, "ttl: expected int | null, got float"),
    (7 * 24 * 3600 + 1, "ttl: expected int <= 604800"),
]


async def test_invalid_ttl_is_400(http: httpx.AsyncClient, account: Account,
                                  phone: PhoneFactory, db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    for ttl, text in TTL_ERRORS:
        r = await send_sms(http, account.key, ttl=ttl)
        assert (r.status_code, r.json()) == (400, error(400, text)), ttl
    assert await count_messages(db) == 0


async def test_valid_ttl_is_accepted_and_stored(http: httpx.AsyncClient, account: Account,
                                                phone: PhoneFactory,
                                                db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    for ttl in [1, 300, None]:
        r = await send_sms(http, account.key, ttl=ttl)
        assert r.status_code == 201, (ttl, r.text)
        left = await db.fetchval("SELECT expires_at - created_at FROM messages WHERE id = $1",
                                 uuid.UUID(r.json()["data"]["id"]))
        assert (left.total_seconds() if left is not None else None) == ttl


async def test_nul_character_in_message_is_a_400_not_a_500(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """A caller's bad input is a 400 of the table; PostgreSQL text cannot hold
    U+0000, so the broker must refuse it, not fault on the INSERT."""
    p = await phone(await account.make_device())
    r = await send_sms(http, account.key, message="code\u00004829")
    body = r.json()
    assert (r.status_code, set(body), body["statusCode"], body["error"]) == \
        (400, {"statusCode", "message", "error"}, 400, "Bad Request"), body
    assert isinstance(body["message"], str) and body["message"]
    assert await count_messages(db) == 0
    await p.nothing(0.05)


async def test_idempotency_keys_of_two_accounts_do_not_collide(
        http: httpx.AsyncClient, make_account: Any, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    owner: Account = await make_account("owner@example.com")
    other: Account = await make_account("other@example.com")
    await phone(await owner.make_device())
    await phone(await other.make_device())
    a = await send_sms(http, owner.key, headers={"Idempotency-Key": "same"})
    b = await send_sms(http, other.key, headers={"Idempotency-Key": "same"})
    c = await send_sms(http, other.key, message="different",
                       headers={"Idempotency-Key": "same-2"})
    assert (a.status_code, b.status_code, c.status_code) == (201, 201, 201)
    assert a.json()["data"]["id"] != b.json()["data"]["id"]
    assert await count_messages(db) == 3


# --- 413 -----------------------------------------------------------------------


def padded_body(size: int) -> bytes:
    """A valid send body of exactly `size` bytes (JSON allows trailing blanks)."""
    core = json.dumps({"recipient": "+16502530000", "message": "hi"}).encode()
    return core + b" " * (size - len(core))


async def test_body_of_exactly_64_kib_is_accepted(http: httpx.AsyncClient, account: Account,
                                                  phone: PhoneFactory) -> None:
    await phone(await account.make_device())
    r = await post_raw(http, account.key, padded_body(MAX_BODY))
    assert r.status_code == 201, r.text


async def test_body_over_64_kib_with_content_length_is_413(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    r = await post_raw(http, account.key, padded_body(MAX_BODY + 1))
    assert (r.status_code, r.json()) == (413, error(413, "Request body exceeds 64 KiB"))
    assert await count_messages(db) == 0
    await p.nothing(0.1)


async def test_chunked_body_over_64_kib_is_413(http: httpx.AsyncClient, account: Account,
                                               phone: PhoneFactory,
                                               db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    body = padded_body(MAX_BODY + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    request = http.build_request("POST", "/messages/send", content=chunks(),
                                 headers={**account.headers, "content-type": "application/json"})
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    r = await http.send(request)
    assert (r.status_code, r.json()) == (413, error(413, "Request body exceeds 64 KiB"))
    assert await count_messages(db) == 0


async def test_post_devices_refuses_a_body_over_64_kib(http: httpx.AsyncClient,
                                                      account: Account,
                                                      db: asyncpg.Connection) -> None:
    body = json.dumps({"name": "Phone"}).encode() + b" " * MAX_BODY
    r = await http.post("/devices", content=body, headers=account.headers)
    assert (r.status_code, r.json()) == (413, error(413, "Request body exceeds 64 KiB"))
    assert await db.fetchval("SELECT count(*) FROM devices") == 0


async def test_chunked_body_under_64_kib_is_accepted(http: httpx.AsyncClient, account: Account,
                                                     phone: PhoneFactory) -> None:
    await phone(await account.make_device())
    body = padded_body(MAX_BODY)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    r = await http.post("/messages/send", content=chunks(), headers=account.headers)
    assert r.status_code == 201, r.text


# --- Idempotency-Key -------------------------------------------------------------


async def test_same_idempotency_key_and_body_replays_the_first_response(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    first = await send_sms(http, account.key, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == 201, first.text
    job = await p.expect("send")
    again = await send_sms(http, account.key, headers={"Idempotency-Key": "order-42"})
    assert again.status_code == 201
    assert again.content == first.content
    assert job["id"] == first.json()["data"]["id"]
    assert await count_messages(db) == 1
    await p.nothing(0.1)  # no second job frame


async def test_idempotency_key_is_per_key_string(http: httpx.AsyncClient, account: Account,
                                                 phone: PhoneFactory,
                                                 db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    a = await send_sms(http, account.key, headers={"Idempotency-Key": "a"})
    b = await send_sms(http, account.key, headers={"Idempotency-Key": "b"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json()["data"]["id"] != b.json()["data"]["id"]
    assert await count_messages(db) == 2


async def test_same_idempotency_key_with_another_body_is_409(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    first = await send_sms(http, account.key, message="one", headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    await p.expect("send")
    r = await send_sms(http, account.key, message="two", headers={"Idempotency-Key": "k1"})
    assert (r.status_code, r.json()) == (409, error(
        409, "Idempotency-Key was already used with a different request body"))
    assert await count_messages(db) == 1
    await p.nothing(0.1)


async def test_concurrent_requests_with_one_idempotency_key_make_one_message(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    p = await phone(await account.make_device())
    responses = await asyncio.gather(*(
        send_sms(http, account.key, headers={"Idempotency-Key": "burst"}) for _ in range(10)))
    assert [r.status_code for r in responses] == [201] * 10
    assert len({r.content for r in responses}) == 1
    assert await count_messages(db) == 1
    assert await db.fetchval("SELECT count(*) FROM message_history") == 2  # queued, dispatching
    assert (await p.expect("send"))["id"] == responses[0].json()["data"]["id"]
    await p.nothing(0.1)


async def test_replayed_idempotent_requests_use_none_of_the_devices_send_rate(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    """A replay sends nothing, so it must not count against the phone's rate:
    with a rate of 2, after one real send the next one still has room."""
    p = await phone(await account.make_device(send_rate=2))
    responses = await asyncio.gather(*(
        send_sms(http, account.key, headers={"Idempotency-Key": "burst"}) for _ in range(10)))
    assert len({r.content for r in responses}) == 1
    await p.expect("send")
    r = await send_sms(http, account.key, message="second real message")
    assert r.status_code == 201, r.text
    assert r.json()["data"]["status"] == "dispatching"


async def test_idempotency_key_over_255_characters_is_400(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    await phone(await account.make_device())
    r = await send_sms(http, account.key, headers={"Idempotency-Key": "k" * 256})
    assert (r.status_code, r.json()) == (400, error(
        400, "Idempotency-Key must be 1-255 characters"))
    assert await count_messages(db) == 0


async def test_concurrent_keyed_sends_share_transactions_and_each_replays_its_own(
        server: Any, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        db: asyncpg.Connection) -> None:
    """30 sends with keys of their own at once: each 201 with its own
    message, written in a few shared transactions (not one each); each key
    then replays its own response, and the phone got each job once."""
    p = await phone(await account.make_device(send_rate=0))
    keyed = server.broker.dispatcher.sender.keyed
    before = keyed.statements
    first = await asyncio.gather(*(
        send_sms(http, account.key, message=f"m{i}", headers={"Idempotency-Key": f"key-{i}"})
        for i in range(30)))
    assert [r.status_code for r in first] == [201] * 30
    assert len({r.json()["data"]["id"] for r in first}) == 30
    assert keyed.statements - before < 30
    again = await asyncio.gather(*(
        send_sms(http, account.key, message=f"m{i}", headers={"Idempotency-Key": f"key-{i}"})
        for i in range(30)))
    assert [r.content for r in again] == [r.content for r in first]
    assert await count_messages(db) == 30
    got = {(await p.expect("send"))["id"] for _ in range(30)}
    assert got == {r.json()["data"]["id"] for r in first}
