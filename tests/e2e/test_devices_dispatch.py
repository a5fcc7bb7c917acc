"""Which WebSocket phone gets a job, and when (contract sections 3, 4 and 5),
end to end: any frame, even a refused one, makes a phone the freshest; and
`cancel` for `hello.pending` ids that are no longer the phone's.

The device choice, the send rate's queue and redelivery after a reconnect,
on every transport, are tests/e2e/test_contract.py.

Real uvicorn, real `websockets` clients, PostgreSQL read directly."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import Account, Phone, PhoneFactory, Server, send_sms, wait_for

pytestmark = pytest.mark.timeout(30)

async def state(db: asyncpg.Connection, mid: str) -> tuple[str, str]:
    r = await db.fetchrow("SELECT status, device_id FROM messages WHERE id = $1", uuid.UUID(mid))
    assert r is not None, f"message {mid} not in PostgreSQL"
    return r["status"], str(r["device_id"])


async def send(http: httpx.AsyncClient, account: Account, message: str = "Your code is 4829",
               ) -> dict[str, Any]:
    r = await send_sms(http, account.key, message=message)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def dispatch(http: httpx.AsyncClient, account: Account, p: Phone,
                   message: str = "Your code is 4829") -> str:
    data = await send(http, account, message)
    assert data["status"] == "dispatching" and data["device"]["id"] == p.device.id, data
    assert (await p.expect("send"))["id"] == data["id"]
    return str(data["id"])


def receipt(mid: str, status: str) -> dict[str, Any]:
    return {"type": "receipt", "id": mid, "status": status}


async def reconnect(server: Server, phone: PhoneFactory, p: Phone,
                    pending: list[str] | None = None) -> Phone:
    """Close `p`, wait until the broker has let go of it, connect again."""
    await p.close()

    async def offline() -> bool:
        return server.broker.presence.get(uuid.UUID(p.device.id)) is None
    await wait_for(offline, what=f"{p.device.name} offline")
    return await phone(p.device, pending=pending)


# --- picking the device --------------------------------------------------------------


async def test_the_device_that_sent_a_frame_last_gets_the_job(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    a = await phone(await account.make_device("A"))
    b = await phone(await account.make_device("B"))  # its hello is the latest frame
    data = await send(http, account)
    assert data["device"] == {"id": b.device.id, "deviceName": "B"}
    assert (await b.expect("send"))["id"] == data["id"]
    await a.nothing()
    assert await a.ask({"type": "ping"}) == {"type": "pong"}
    data = await send(http, account)
    assert data["device"] == {"id": a.device.id, "deviceName": "A"}
    assert (await a.expect("send"))["id"] == data["id"]
    await b.nothing()
    # Any frame counts, even one the broker refuses.
    assert (await b.ask({"type": "ack", "id": str(uuid.uuid4())}))["code"] == "not_yours"
    data = await send(http, account)
    assert data["device"]["id"] == b.device.id
    assert (await b.expect("send"))["id"] == data["id"]
    await a.nothing()


# --- hello.pending -------------------------------------------------------------------


async def test_pending_ids_no_longer_the_phones_get_cancel_its_own_get_send(
        server: Server, http: httpx.AsyncClient, account: Account, make_account: Any,
        db: asyncpg.Connection, phone: PhoneFactory) -> None:
    me = await phone(await account.make_device("Me"))
    own_new = await dispatch(http, account, me, message="own, not acked")
    own_acked = await dispatch(http, account, me, message="own, acked")
    assert await me.ask({"type": "ack", "id": own_acked}) == receipt(own_acked, "sending")
    own_expired = await dispatch(http, account, me, message="own, expired")
    await db.execute("UPDATE messages SET status = 'failed', error = 'expired' WHERE id = $1",
                     uuid.UUID(own_expired))
    sibling = await phone(await account.make_device("Sibling"))  # freshest now
    siblings = await dispatch(http, account, sibling, message="the sibling's")
    other = await make_account("other@example.com")
    stranger = await phone(await other.make_device("Stranger"))
    strangers = await dispatch(http, other, stranger, message="another account's")
    unknown = str(uuid.uuid4())
    held = [own_new, own_acked, own_expired, siblings, strangers, unknown, "not-a-uuid"]

    me = await reconnect(server, phone, me, pending=held)
    got = [await me.recv() for _ in range(7)]
    await me.nothing()
    sends = [f["id"] for f in got if f["type"] == "send"]
    cancels = {f["id"]: f["reason"] for f in got if f["type"] == "cancel"}
    assert sorted(sends) == sorted([own_new, own_acked])
    assert set(cancels) == {own_expired, siblings, strangers, unknown, "not-a-uuid"}
    assert len(got) == len(sends) + len(cancels)
    assert cancels[own_expired] == "expired"
    assert all(isinstance(r, str) and r for r in cancels.values())
    # A cancel changes nobody's job.
    assert await state(db, siblings) == ("dispatching", sibling.device.id)
    assert await state(db, strangers) == ("dispatching", stranger.device.id)
    await sibling.nothing()
    assert await sibling.ask({"type": "ack", "id": siblings}) == receipt(siblings, "sending")
    # The phone's own jobs carry on.
    assert await me.ask({"type": "ack", "id": own_new}) == receipt(own_new, "sending")
    assert await me.ask({"type": "status", "id": own_acked, "status": "sent"}) == \
        receipt(own_acked, "sent")


async def test_a_pending_job_in_sent_gets_no_cancel_and_can_still_be_delivered(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    """A phone holds a `sent` job while it waits for the carrier's delivery
    report: a `cancel` would make it drop that report."""
    p = await phone(await account.make_device())
    half = await dispatch(http, account, p, message="half")
    done = await dispatch(http, account, p, message="done")
    for mid, steps in ((half, ["sent"]), (done, ["sent", "delivered"])):
        assert await p.ask({"type": "ack", "id": mid}) == receipt(mid, "sending")
        for status in steps:
            assert await p.ask({"type": "status", "id": mid, "status": status}) == \
                receipt(mid, status)
    p = await reconnect(server, phone, p, pending=[half, done])
    assert await p.recv() == {"type": "cancel", "id": done, "reason": "done"}
    await p.nothing()
    assert await p.ask({"type": "status", "id": half, "status": "delivered"}) == \
        receipt(half, "delivered")
