"""The lifecycle's clocks as a phone sees them (contract section 5), end to
end with short settings: a job never acked goes to another device once its
own has stayed away past the reassign delay (and the first phone then gets a
`cancel`, never a receipt); a job in `sending` stays with its device; a
message whose `ttl` passes before a phone took it fails as `expired`.

Real uvicorn, real `websockets` clients, PostgreSQL read directly."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from broker.settings import Settings
from tests.e2e.conftest import SECRET, Account, Phone, PhoneFactory, Server, send_sms, wait_for

pytestmark = pytest.mark.timeout(30)

REASSIGN_S = 1
TTL_S = 1


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    reassign_after_s=REASSIGN_S, last_seen_flush_s=0.2, pool_min=1,
                    pool_max=10)


async def state(db: asyncpg.Connection, mid: str) -> tuple[str, str | None, str]:
    r = await db.fetchrow("SELECT status, error, device_id FROM messages WHERE id = $1",
                          uuid.UUID(mid))
    assert r is not None, f"message {mid} not in PostgreSQL"
    return r["status"], r["error"], str(r["device_id"])


async def dispatch(http: httpx.AsyncClient, account: Account, p: Phone, **extra: Any) -> str:
    r = await send_sms(http, account.key, **extra)
    assert r.status_code == 201, r.text
    data = r.json()["data"]
    assert data["status"] == "dispatching" and data["device"]["id"] == p.device.id, data
    assert (await p.expect("send"))["id"] == data["id"]
    return str(data["id"])


def receipt(mid: str, status: str) -> dict[str, Any]:
    return {"type": "receipt", "id": mid, "status": status}


async def gone(server: Server, p: Phone) -> None:
    await p.close()

    async def offline() -> bool:
        return server.broker.presence.get(uuid.UUID(p.device.id)) is None
    await wait_for(offline, what=f"{p.device.name} offline")


async def test_an_unacked_job_moves_to_another_device_after_the_reassign_delay(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    other = await phone(await account.make_device("Other"))
    first = await phone(await account.make_device("First"))  # the freshest
    acked = await dispatch(http, account, first, message="acked")
    assert await first.ask({"type": "ack", "id": acked}) == receipt(acked, "sending")
    unacked = await dispatch(http, account, first, message="not acked")
    await gone(server, first)

    # Past the delay the job that was never acked goes to the other phone...
    job = await other.expect("send", timeout=REASSIGN_S + 4)
    assert job == {"type": "send", "id": unacked, "recipient": "+16502530000",
                   "message": "not acked"}
    assert await state(db, unacked) == ("dispatching", None, other.device.id)
    # ...and the acked one stays with its device ("a job in sending stays").
    await other.nothing(0.3)
    assert await state(db, acked) == ("sending", None, first.device.id)

    # The first phone comes back still holding both: the moved one is cancelled,
    # its own comes again.
    back = await phone(first.device, pending=[acked, unacked])
    got = [await back.recv(), await back.recv()]
    await back.nothing()
    assert {"type": "send", "id": acked, "recipient": "+16502530000",
            "message": "acked"} in got
    cancel = next(f for f in got if f["id"] == unacked)
    assert cancel["type"] == "cancel" and cancel["reason"], cancel
    # An ack from it now is never a receipt: the SMS leaves one phone only.
    answer = await back.ask({"type": "ack", "id": unacked})
    assert answer["type"] in {"cancel", "error"}, answer
    assert await state(db, unacked) == ("dispatching", None, other.device.id)
    assert await other.ask({"type": "ack", "id": unacked}) == receipt(unacked, "sending")


async def test_a_phone_back_within_the_delay_keeps_its_job(
        server: Server, http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    other = await phone(await account.make_device("Other"))
    first = await phone(await account.make_device("First"))
    mid = await dispatch(http, account, first)
    await gone(server, first)
    back = await phone(first.device, pending=[mid])
    assert (await back.expect("send"))["id"] == mid
    assert await back.ask({"type": "ack", "id": mid}) == receipt(mid, "sending")
    # Acked in time: the delay passing later moves nothing.
    await other.nothing(REASSIGN_S + 0.5)
    assert await state(db, mid) == ("sending", None, first.device.id)


async def test_a_job_the_phone_never_took_expires_after_its_ttl(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device())
    taken = await dispatch(http, account, p, message="taken", ttl=TTL_S)
    assert await p.ask({"type": "ack", "id": taken}) == receipt(taken, "sending")
    left = await dispatch(http, account, p, message="left", ttl=TTL_S)

    async def expired() -> bool:
        return (await state(db, left))[:2] == ("failed", "expired")
    await wait_for(expired, timeout=TTL_S + 4, what="the un-acked job failed as expired")
    statuses = [r["status"] for r in await db.fetch(
        "SELECT status FROM message_history WHERE message_id = $1 ORDER BY at, array_position("
            " ARRAY['queued', 'dispatching', 'sending', 'sent', 'delivered', 'failed'], status)",
        uuid.UUID(left))]
    assert statuses[-1] == "failed" and "sending" not in statuses
    r = await http.get(f"/messages/{left}", headers=account.headers)
    assert r.json()["data"]["status"] == "failed" and r.json()["data"]["error"] == "expired"
    # The phone acks late: a cancel, never a receipt.
    assert await p.ask({"type": "ack", "id": left}) == {"type": "cancel", "id": left,
                                                       "reason": "expired"}
    # The one it took in time is untouched by its ttl.
    assert await state(db, taken) == ("sending", None, p.device.id)


async def test_a_queued_message_whose_ttl_passes_expires_unsent(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        phone: PhoneFactory) -> None:
    p = await phone(await account.make_device(send_rate=1))
    await dispatch(http, account, p)
    r = await send_sms(http, account.key, message="waits", ttl=TTL_S)
    assert r.status_code == 201 and r.json()["data"]["status"] == "queued", r.text
    mid = r.json()["data"]["id"]

    async def expired() -> bool:
        return (await state(db, mid))[:2] == ("failed", "expired")
    await wait_for(expired, timeout=TTL_S + 4, what="the queued message failed as expired")
    await p.nothing()  # never handed to the phone
