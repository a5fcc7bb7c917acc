"""Which phone gets a job, and when (contract sections 3 and 5), end to end:
the freshest device, per-device pacing with `queued` jobs drained when room
frees, redelivery after a reconnect, and `cancel` for `hello.pending` ids
that are no longer the phone's.

Real uvicorn, real `websockets` clients, PostgreSQL read directly."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

import broker.delivery.presence
from tests.e2e.conftest import Account, Phone, PhoneFactory, Server, send_sms, wait_for

pytestmark = pytest.mark.timeout(30)

ORDER = ["queued", "dispatching", "sending", "sent", "delivered", "failed"]


async def history(db: asyncpg.Connection, mid: str) -> list[str]:
    rows = await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1"
        " ORDER BY at, array_position($2::text[], status)", uuid.UUID(mid), ORDER)
    return [r["status"] for r in rows]


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


async def test_a_device_at_its_rate_is_passed_over_for_one_with_room(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    roomy = await phone(await account.make_device("Roomy", send_rate=30))
    tight = await phone(await account.make_device("Tight", send_rate=1))  # the freshest
    first = await dispatch(http, account, tight)
    for _ in range(2):
        mid = await dispatch(http, account, roomy)
        assert await state(db, mid) == ("dispatching", roomy.device.id)
    await tight.nothing()
    assert await state(db, first) == ("dispatching", tight.device.id)


async def test_past_the_send_rate_a_job_waits_queued_then_goes_when_room_frees(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker.delivery.presence, "PACING_WINDOW_S", 1.5)
    device = await account.make_device("Paced", send_rate=2)
    p = await phone(device)
    for n in range(2):
        mid = await dispatch(http, account, p, message=f"job {n}")
        assert await state(db, mid) == ("dispatching", device.id)
    data = await send(http, account, message="job 2")
    assert data["status"] == "queued"
    assert data["device"] == {"id": device.id, "deviceName": "Paced"}
    third = str(data["id"])
    assert await state(db, third) == ("queued", device.id)
    assert await history(db, third) == ["queued"]
    # Not handed over yet, so not the phone's to ack.
    err = await p.ask({"type": "ack", "id": third})
    assert err["type"] == "error" and err["code"] == "not_yours" and err["id"] == third
    await p.nothing(0.3)
    assert await state(db, third) == ("queued", device.id)
    # The window passes: the job goes out without any new request.
    job = await p.expect("send", timeout=5)
    assert job == {"type": "send", "id": third, "recipient": "+16502530000",
                   "message": "job 2"}
    assert await state(db, third) == ("dispatching", device.id)
    assert await history(db, third) == ["queued", "dispatching"]
    assert await p.ask({"type": "ack", "id": third}) == receipt(third, "sending")
    got = (await http.get(f"/messages/{third}", headers=account.headers)).json()["data"]
    assert got["status"] == "sending"
    assert [h["status"] for h in got["history"]] == ["queued", "dispatching", "sending"]


async def test_a_queued_job_goes_to_a_device_that_connects_with_room(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    full = await phone(await account.make_device("Full", send_rate=1))
    await dispatch(http, account, full)
    data = await send(http, account, message="waiting")
    assert data["status"] == "queued" and data["device"]["id"] == full.device.id
    mid = str(data["id"])
    fresh = await phone(await account.make_device("Fresh"))
    job = await fresh.expect("send")
    assert job == {"type": "send", "id": mid, "recipient": "+16502530000", "message": "waiting"}
    assert await state(db, mid) == ("dispatching", fresh.device.id)
    assert await history(db, mid) == ["queued", "dispatching"]
    await full.nothing()
    assert await fresh.ask({"type": "ack", "id": mid}) == receipt(mid, "sending")


# --- redelivery after a reconnect -----------------------------------------------------


async def test_a_job_never_acked_stays_with_its_phone_and_comes_again(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    data = await send(http, account)
    mid = str(data["id"])
    first = await p.expect("send")
    p = await reconnect(server, phone, p)
    # While it was away the job stayed dispatching with this device, in PostgreSQL.
    assert await state(db, mid) == ("dispatching", p.device.id)
    assert await p.expect("send") == first
    await p.nothing()
    assert await p.ask({"type": "ack", "id": mid}) == receipt(mid, "sending")
    assert await p.ask({"type": "status", "id": mid, "status": "sent"}) == receipt(mid, "sent")
    assert await history(db, mid) == ["queued", "dispatching", "sending", "sent"]


async def test_a_job_in_sending_comes_again_and_a_re_ack_repeats(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    assert await p.ask({"type": "ack", "id": mid}) == receipt(mid, "sending")
    p = await reconnect(server, phone, p, pending=[mid])
    assert await state(db, mid) == ("sending", p.device.id)
    job = await p.expect("send")
    assert job["id"] == mid
    await p.nothing()  # its own job: a send, no cancel
    assert await p.ask({"type": "ack", "id": mid}) == receipt(mid, "sending")
    assert await history(db, mid) == ["queued", "dispatching", "sending"]
    assert await p.ask({"type": "status", "id": mid, "status": "sent"}) == receipt(mid, "sent")
    assert await p.ask({"type": "status", "id": mid, "status": "delivered"}) == \
        receipt(mid, "delivered")
    assert await state(db, mid) == ("delivered", p.device.id)


async def test_sent_and_delivered_jobs_are_not_sent_again(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    done = await dispatch(http, account, p, message="done")
    half = await dispatch(http, account, p, message="half")
    open_ = await dispatch(http, account, p, message="open")
    for mid, steps in ((done, ["sent", "delivered"]), (half, ["sent"])):
        assert await p.ask({"type": "ack", "id": mid}) == receipt(mid, "sending")
        for status in steps:
            assert await p.ask({"type": "status", "id": mid, "status": status}) == \
                receipt(mid, status)
    p = await reconnect(server, phone, p)
    assert (await p.expect("send"))["id"] == open_
    await p.nothing()


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
