"""The message lifecycle driven by a phone's reports (contract section 5),
end to end: forward only, repeats answered with the same receipt, late
reports, failures with their error, refusals that change nothing, and every
transition's history row committed before its receipt.

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


async def get_message(http: httpx.AsyncClient, account: Account, mid: str) -> dict[str, Any]:
    r = await http.get(f"/messages/{mid}", headers=account.headers)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


# --- the forward path ---------------------------------------------------------------


async def test_every_transition_is_committed_before_its_receipt(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    # The send response came after the commit: queued and dispatching are there.
    assert await state(db, mid) == ("dispatching", None, p.device.id)
    assert await history(db, mid) == ["queued", "dispatching"]
    steps = [(ack(mid), "sending"), (report(mid, "sent", at="2024-05-01T12:00:03.120Z"), "sent"),
             (report(mid, "delivered"), "delivered")]
    expected = ["queued", "dispatching"]
    for frame, status in steps:
        assert await p.ask(frame) == receipt(mid, status)
        expected.append(status)
        # Read right after the receipt: the row is already committed.
        assert await state(db, mid) == (status, None, p.device.id)
        assert await history(db, mid) == expected
    got = await get_message(http, account, mid)
    assert got["status"] == "delivered" and got["error"] is None
    assert [h["status"] for h in got["history"]] == ["queued", "dispatching", "sending", "sent",
                                                     "delivered"]
    ats = [h["at"] for h in got["history"]]
    assert ats == sorted(ats)


async def test_repeated_reports_get_the_same_receipt_and_change_nothing(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    count = "SELECT count(*) FROM message_history WHERE message_id = $1"
    script = [
        (ack(mid), "sending"), (ack(mid), "sending"),
        (report(mid, "sent"), "sent"), (report(mid, "sent"), "sent"),
        (ack(mid), "sent"),  # an ack after sent: "already sent, do not send again"
        (report(mid, "delivered"), "delivered"), (report(mid, "delivered"), "delivered"),
        (ack(mid), "delivered"),
    ]
    rows_before = await db.fetchval(count, uuid.UUID(mid))
    stored = "dispatching"
    for frame, answer in script:
        moves = answer != stored
        assert await p.ask(frame) == receipt(mid, answer), frame
        rows = await db.fetchval(count, uuid.UUID(mid))
        assert rows == rows_before + (1 if moves else 0), frame
        rows_before, stored = rows, answer
        assert (await state(db, mid))[0] == stored
    assert await history(db, mid) == ["queued", "dispatching", "sending", "sent", "delivered"]


async def test_late_sent_after_delivered_is_recorded_but_status_stays_delivered(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    assert await p.ask(ack(mid)) == receipt(mid, "sending")
    # The delivery report overtook the sent report.
    assert await p.ask(report(mid, "delivered")) == receipt(mid, "delivered")
    assert await p.ask(report(mid, "sent")) == receipt(mid, "sent")
    assert (await state(db, mid))[0] == "delivered"
    assert await history(db, mid) == ["queued", "dispatching", "sending", "delivered", "sent"]
    got = await get_message(http, account, mid)
    assert got["status"] == "delivered"
    assert [h["status"] for h in got["history"]][-2:] == ["delivered", "sent"]
    # Repeating the late report adds nothing more.
    assert await p.ask(report(mid, "sent")) == receipt(mid, "sent")
    assert len(await history(db, mid)) == 5


# --- failures ------------------------------------------------------------------------


@pytest.mark.parametrize("before", [[], ["ack"], ["ack", "sent"]],
                         ids=["from-dispatching", "from-sending", "from-sent"])
async def test_failed_stores_the_phones_error(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory, before: list[str]) -> None:
    p = await phone(await account.make_device())
    mid = await dispatch(http, account, p)
    for step in before:
        answer = "sending" if step == "ack" else step
        assert await p.ask(ack(mid) if step == "ack" else report(mid, step)) == \
            receipt(mid, answer)
    prior = await history(db, mid)
    assert prior[-1] == {0: "dispatching", 1: "sending", 2: "sent"}[len(before)]
    reason = "RESULT_ERROR_NO_SERVICE"
    assert await p.ask(report(mid, "failed", error=reason)) == receipt(mid, "failed")
    assert await state(db, mid) == ("failed", reason, p.device.id)
    assert await history(db, mid) == prior + ["failed"]
    row_error = await db.fetchval(
        "SELECT error FROM message_history WHERE message_id = $1 AND status = 'failed'",
        uuid.UUID(mid))
    assert row_error == reason
    got = await get_message(http, account, mid)
    assert got["status"] == "failed" and got["error"] == reason
    assert [h["status"] for h in got["history"]] == prior + ["failed"]
    # A repeat is answered the same and changes nothing, error included.
    assert await p.ask(report(mid, "failed", error="other")) == receipt(mid, "failed")
    assert await state(db, mid) == ("failed", reason, p.device.id)
    assert await history(db, mid) == prior + ["failed"]


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
