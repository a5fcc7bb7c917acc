"""The message lifecycle driven by a WebSocket phone's reports (contract
sections 4 and 5), end to end: what the wire answers — the receipt an ack
gets once the job has moved on, `cancel` for an ack on a failed message,
and the `error` codes of refusals (`refused`, `not_acked`, `not_yours`).

The lifecycle itself, on every transport (the forward path, failures,
repeats, late reports, refusals that change nothing), is
tests/e2e/test_contract.py.

Real uvicorn, real `websockets` clients, PostgreSQL read directly."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import Account, Phone, PhoneFactory, send_sms

pytestmark = pytest.mark.timeout(30)

ORDER = ["queued", "dispatching", "sending", "sent", "delivered", "failed"]


async def history(db: asyncpg.Connection, mid: str) -> list[str]:
    rows = await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1"
        " ORDER BY at, array_position($2::text[], status)", uuid.UUID(mid), ORDER)
    return [r["status"] for r in rows]


async def state(db: asyncpg.Connection, mid: str) -> tuple[str, str | None, str]:
    r = await db.fetchrow("SELECT status, error, device_id FROM messages WHERE id = $1",
                          uuid.UUID(mid))
    assert r is not None, f"message {mid} not in PostgreSQL"
    return r["status"], r["error"], str(r["device_id"])


async def dispatch(http: httpx.AsyncClient, account: Account, p: Phone) -> str:
    """Send one SMS and take its job frame at `p`; the message id."""
    r = await send_sms(http, account.key)
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["status"] == "dispatching" and data["device"]["id"] == p.device.id
    job = await p.expect("send")
    assert job["id"] == data["id"]
    return str(data["id"])


def receipt(mid: str, status: str) -> dict[str, Any]:
    return {"type": "receipt", "id": mid, "status": status}


def ack(mid: str) -> dict[str, Any]:
    return {"type": "ack", "id": mid}


def report(mid: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"type": "status", "id": mid, "status": status, **extra}


# --- repeats ---------------------------------------------------------------------------


async def test_an_ack_after_sent_or_delivered_gets_the_stored_status_as_its_receipt(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    """A phone that lost track acks again: the receipt says "already sent,
    do not send again", and nothing moves."""
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    assert await p.ask(ack(mid)) == receipt(mid, "sending")
    for status in ("sent", "delivered"):
        assert await p.ask(report(mid, status)) == receipt(mid, status)
        before = await history(db, mid)
        assert await p.ask(ack(mid)) == receipt(mid, status)
        assert await history(db, mid) == before
        assert (await state(db, mid))[0] == status
    assert await history(db, mid) == ["queued", "dispatching", "sending", "sent", "delivered"]


# --- failures ------------------------------------------------------------------------


async def test_failed_after_delivered_is_refused(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    assert await p.ask(ack(mid)) == receipt(mid, "sending")
    assert await p.ask(report(mid, "delivered")) == receipt(mid, "delivered")
    err = await p.ask(report(mid, "failed", error="late"))
    assert err["type"] == "error" and err["id"] == mid and err["code"] == "refused", err
    assert await state(db, mid) == ("delivered", None, p.device.id)
    assert await history(db, mid) == ["queued", "dispatching", "sending", "delivered"]


async def test_ack_on_a_failed_message_gets_cancel_never_a_receipt(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    # Expired while the phone sat on it (what the ttl timer does).
    await db.execute("UPDATE messages SET status = 'failed', error = 'expired' WHERE id = $1",
                     uuid.UUID(mid))
    for _ in range(2):
        assert await p.ask(ack(mid)) == {"type": "cancel", "id": mid, "reason": "expired"}
        await p.nothing(0.2)
    assert await state(db, mid) == ("failed", "expired", p.device.id)
    assert "sending" not in await history(db, mid)


# --- refusals that change nothing -------------------------------------------------------


@pytest.mark.parametrize("status", ["sent", "delivered"])
async def test_a_report_before_the_ack_is_refused_not_acked(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory, status: str) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    err = await p.ask(report(mid, status))
    assert err["type"] == "error" and err["code"] == "not_acked" and err["id"] == mid, err
    assert await state(db, mid) == ("dispatching", None, p.device.id)
    assert await history(db, mid) == ["queued", "dispatching"]
    # Nothing was spoiled: the proper order still works.
    assert await p.ask(ack(mid)) == receipt(mid, "sending")
    assert await p.ask(report(mid, status)) == receipt(mid, status)


async def test_reports_on_another_devices_message_are_refused_not_yours(
        http: httpx.AsyncClient, account: Account, make_account: Any, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    owner = await phone(await account.make_device("Owner"))
    mid = await dispatch(http, account, owner)
    # Connected after the send, so neither was picked for it.
    sibling = await phone(await account.make_device("Sibling"))
    other_account = await make_account("other@example.com")
    stranger = await phone(await other_account.make_device("Stranger"))
    frames = [ack(mid), report(mid, "sent"), report(mid, "delivered"),
              report(mid, "failed", error="nope")]
    for p in (sibling, stranger):
        for frame in frames:
            err = await p.ask(frame)
            assert err["type"] == "error" and err["code"] == "not_yours", (p.device.name, err)
            assert err["id"] == mid
    assert await state(db, mid) == ("dispatching", None, owner.device.id)
    assert await history(db, mid) == ["queued", "dispatching"]
    # Still the owner's, and still refused to the others once it moves on.
    assert await owner.ask(ack(mid)) == receipt(mid, "sending")
    for p in (sibling, stranger):
        assert (await p.ask(report(mid, "sent")))["code"] == "not_yours"
    assert await state(db, mid) == ("sending", None, owner.device.id)
    # The stranger's account cannot read it either.
    r = await http.get(f"/messages/{mid}", headers=other_account.headers)
    assert r.status_code == 404


@pytest.mark.parametrize("bad_id", [str(uuid.uuid4()), "not-a-uuid", "0", "x" * 64],
                         ids=["unknown-uuid", "word", "digit", "64-chars"])
async def test_unknown_or_malformed_id_is_not_yours(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory, bad_id: str) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    for frame in (ack(bad_id), report(bad_id, "sent"), report(bad_id, "failed", error="e")):
        err = await p.ask(frame)
        assert err == {"type": "error", "code": "not_yours", "id": bad_id,
                       "detail": err["detail"]}, err
    # The socket and the real job are untouched.
    assert await history(db, mid) == ["queued", "dispatching"]
    assert await p.ask(ack(mid)) == receipt(mid, "sending")
