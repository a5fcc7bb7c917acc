"""The first SMS of the README, end to end: send, job at the phone, ack,
sent, delivered, and the history in PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.e2e.conftest import Account, PhoneFactory, send_sms


async def test_first_sms_end_to_end(http: httpx.AsyncClient, account: Account,
                                    phone: PhoneFactory) -> None:
    device = await account.make_device("My Samsung S24")
    p = await phone(device)
    r = await send_sms(http, account.key, recipient="+1 650-253-0000")
    assert r.status_code == 201, r.text
    body = r.json()
    mid = body["data"]["id"]
    assert body == {"statusCode": 201, "message": "SMS queued for delivery", "data": {
        "id": mid, "recipient": "+16502530000", "message": "Your code is 4829",
        "status": "dispatching", "device": {"id": device.id, "deviceName": "My Samsung S24"}}}
    job = await p.expect("send")
    assert job == {"type": "send", "id": mid, "recipient": "+16502530000",
                   "message": "Your code is 4829"}
    assert await p.ask({"type": "ack", "id": mid}) == {"type": "receipt", "id": mid,
                                                      "status": "sending"}
    assert (await p.ask({"type": "status", "id": mid, "status": "sent"}))["status"] == "sent"
    assert (await p.ask({"type": "status", "id": mid, "status": "delivered"}))["status"] == \
        "delivered"
    got = (await http.get(f"/messages/{mid}", headers=account.headers)).json()["data"]
    assert got["status"] == "delivered"
    assert [h["status"] for h in got["history"]] == ["queued", "dispatching", "sending", "sent",
                                                     "delivered"]


async def test_deactivating_a_device_closes_its_socket_at_once(account: Account,
                                                               phone: PhoneFactory) -> None:
    """`devices deactivate` runs in another process: the broker hears of it by
    LISTEN/NOTIFY and closes the phone's socket (1008) instead of keeping it
    eligible for jobs until it reconnects."""
    import asyncio

    import websockets

    from broker import store

    device = await account.make_device()
    p = await phone(device)
    assert await store.deactivate_device(account.db, uuid.UUID(device.id))
    try:
        await asyncio.wait_for(p.ws.recv(), 5)
        raise AssertionError("socket still open")
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1008


async def test_a_device_deactivated_before_its_hello_is_closed_after_it(
        account: Account, phone: PhoneFactory) -> None:
    """The deactivation notice finds no connection while the phone has not
    said hello yet; the check after registering catches it."""
    import asyncio

    import websockets

    from broker import store

    device = await account.make_device()
    p = await phone(device, hello=False)
    assert await store.deactivate_device(account.db, uuid.UUID(device.id))
    await p.send({"type": "hello", "protocol": 1})
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frame = await asyncio.wait_for(p.ws.recv(), 5)
            assert '"send"' not in str(frame)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
