"""The delivery contract (sections 3 and 5), end to end, once per phone
transport: send -> job -> ack -> reports -> history; failures with their
error; repeats and late reports; refusals that change nothing; the device
choice and the send rate's queue; redelivery on reconnect; reassignment
after the reassign delay; ttl expiry.

Phones are driven through `PhoneDriver` only (tests/e2e/drivers.py), via the
`driver` fixture parametrized by `transport`; what the broker stored is read
through the HTTP API and PostgreSQL, never from the wire. What only one
transport has (frames, error codes, close codes, `hello`) is tested in that
transport's own modules (tests/e2e/test_devices_*.py for WebSocket,
tests/e2e/test_smsgate_*.py for the SMS Gateway app). Where the contract's
rule itself differs (a job the app listed is taken: it moves only once the
phone confirmed a cancel; a job in `sending` is offered again over WebSocket
only), a test branches on the driver's `holds_listed_jobs` or
`redelivers_taken_jobs`, each branch asserting its transport's rule.

Real uvicorn, real clients, real PostgreSQL; short clocks from
`broker_settings` below."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import broker.delivery.presence
from broker.settings import Settings
from tests.e2e.conftest import (
    SECRET,
    Account,
    DriverFactory,
    Stored,
    get_message,
    send_sms,
    stored,
    stored_history,
    wait_for,
)
from tests.e2e.drivers import CarrierReport, Job, PhoneDriver

pytestmark = pytest.mark.timeout(30)

REASSIGN_S = 1
TTL_S = 1
RECIPIENT = "+16502530000"
FULL_PATH = ["queued", "dispatching", "sending", "sent", "delivered"]


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    reassign_after_s=REASSIGN_S, sweep_s=0.2, last_seen_flush_s=0.2,
                    pool_min=1, pool_max=10)


async def send(http: httpx.AsyncClient, account: Account, message: str = "Your code is 4829",
               **extra: Any) -> dict[str, Any]:
    """`POST /messages/send` answered 201; its `data`."""
    r = await send_sms(http, account.key, message=message, **extra)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def dispatch(http: httpx.AsyncClient, account: Account, phone: PhoneDriver,
                   message: str = "Your code is 4829", **extra: Any) -> str:
    """Send one SMS that goes straight to `phone`, which is offered it; the id."""
    data = await send(http, account, message, **extra)
    assert data["status"] == "dispatching", data
    assert data["device"] == {"id": phone.device.id, "deviceName": phone.device.name}, data
    assert await phone.next_job() == Job(data["id"], RECIPIENT, message)
    return str(data["id"])


async def history_rows(db: asyncpg.Connection, mid: str) -> int:
    n = await db.fetchval("SELECT count(*) FROM message_history WHERE message_id = $1",
                          uuid.UUID(mid))
    assert isinstance(n, int)
    return n


# --- the forward path ---------------------------------------------------------------


async def test_send_job_ack_sent_delivered_each_stored_when_the_phone_hears_of_it(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    p = await driver(account)
    mid = await dispatch(http, account, p)
    # The send response came after the commit: queued and dispatching are there.
    assert await stored(db, mid) == Stored("dispatching", None, p.device.id)
    assert await stored_history(db, mid) == ["queued", "dispatching"]
    await p.ack(mid)
    # Read right after the broker's answer: the row is already committed.
    assert await stored(db, mid) == Stored("sending", None, p.device.id)
    assert await stored_history(db, mid) == FULL_PATH[:3]
    await p.report(mid, "sent")
    assert await stored(db, mid) == Stored("sent", None, p.device.id)
    assert await stored_history(db, mid) == FULL_PATH[:4]
    await p.report(mid, "delivered")
    assert await stored(db, mid) == Stored("delivered", None, p.device.id)
    assert await stored_history(db, mid) == FULL_PATH
    got = await get_message(http, account, mid)
    assert got["status"] == "delivered" and got["error"] is None
    assert got["device"] == {"id": p.device.id, "deviceName": p.device.name}
    assert [h["status"] for h in got["history"]] == FULL_PATH
    ats = [h["at"] for h in got["history"]]
    assert ats == sorted(ats)


@pytest.mark.parametrize("before", [[], ["ack"], ["ack", "sent"]],
                         ids=["from-dispatching", "from-sending", "from-sent"])
async def test_failed_stores_the_phones_error(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory, before: list[str]) -> None:
    p = await driver(account)
    mid = await dispatch(http, account, p)
    for step in before:
        await (p.ack(mid) if step == "ack" else p.report(mid, "sent"))
    prior = await stored_history(db, mid)
    assert prior == FULL_PATH[:2 + len(before)]
    reason = "RESULT_ERROR_NO_SERVICE"
    await p.report(mid, "failed", error=reason)
    assert await stored(db, mid) == Stored("failed", reason, p.device.id)
    assert await stored_history(db, mid) == [*prior, "failed"]
    row_error = await db.fetchval(
        "SELECT error FROM message_history WHERE message_id = $1 AND status = 'failed'",
        uuid.UUID(mid))
    assert row_error == reason
    got = await get_message(http, account, mid)
    assert got["status"] == "failed" and got["error"] == reason
    assert [h["status"] for h in got["history"]] == [*prior, "failed"]
    # A repeat is taken and changes nothing, error included.
    await p.report(mid, "failed", error="other")
    assert await stored(db, mid) == Stored("failed", reason, p.device.id)
    assert await stored_history(db, mid) == [*prior, "failed"]


async def test_repeated_reports_are_taken_and_change_nothing(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    p = await driver(account)
    mid = await dispatch(http, account, p)
    script: list[tuple[str, CarrierReport | None]] = [
        ("sending", None), ("sending", None), ("sent", "sent"), ("sent", "sent"),
        ("delivered", "delivered"), ("delivered", "delivered")]
    rows, status = await history_rows(db, mid), "dispatching"
    for expected, report in script:
        await (p.ack(mid) if report is None else p.report(mid, report))
        rows += expected != status  # a history row only where the status moved
        status = expected
        assert await history_rows(db, mid) == rows, (expected, report)
        assert (await stored(db, mid)).status == status
    assert await stored_history(db, mid) == FULL_PATH
    await p.expect_nothing()


async def test_a_late_sent_after_delivered_is_recorded_but_the_status_stays_delivered(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    p = await driver(account)
    mid = await dispatch(http, account, p)
    await p.ack(mid)
    # The delivery report overtook the sent report.
    await p.report(mid, "delivered")
    await p.report(mid, "sent")
    assert (await stored(db, mid)).status == "delivered"
    late = ["queued", "dispatching", "sending", "delivered", "sent"]
    assert await stored_history(db, mid) == late
    got = await get_message(http, account, mid)
    assert got["status"] == "delivered"
    assert [h["status"] for h in got["history"]] == late
    # Repeating the late report adds nothing more.
    await p.report(mid, "sent")
    assert await stored_history(db, mid) == late


async def test_reports_on_another_devices_job_are_refused_and_change_nothing(
        http: httpx.AsyncClient, account: Account, make_account: Any, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    owner = await driver(account, "Owner")
    mid = await dispatch(http, account, owner)
    # Connected after the send, so neither was picked for it.
    sibling = await driver(account, "Sibling")
    other_account = await make_account("other@example.com")
    stranger = await driver(other_account, "Stranger")
    for p in (sibling, stranger):
        await p.ack_refused(mid)
        await p.report_refused(mid, "sent")
        await p.report_refused(mid, "delivered")
        await p.report_refused(mid, "failed", error="nope")
    assert await stored(db, mid) == Stored("dispatching", None, owner.device.id)
    assert await stored_history(db, mid) == ["queued", "dispatching"]
    # Still the owner's, and still refused to the others once it moves on.
    await owner.ack(mid)
    for p in (sibling, stranger):
        await p.report_refused(mid, "sent")
        await p.expect_nothing()
    assert await stored(db, mid) == Stored("sending", None, owner.device.id)
    assert await stored_history(db, mid) == FULL_PATH[:3]


# --- which phone, and when ------------------------------------------------------------


async def test_a_phone_at_its_rate_is_passed_over_for_one_with_room(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    roomy = await driver(account, "Roomy", send_rate=30)
    tight = await driver(account, "Tight", send_rate=1)  # the freshest
    first = await dispatch(http, account, tight)
    for n in range(2):
        mid = await dispatch(http, account, roomy, message=f"job {n}")
        assert await stored(db, mid) == Stored("dispatching", None, roomy.device.id)
    await tight.expect_nothing()
    assert await stored(db, first) == Stored("dispatching", None, tight.device.id)


async def test_past_the_send_rate_a_job_waits_queued_and_goes_when_room_comes(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Long enough for the checks below on a busy machine.
    monkeypatch.setattr(broker.delivery.presence, "PACING_WINDOW_S", 2.5)
    p = await driver(account, "Paced", send_rate=2)
    for n in range(2):
        await dispatch(http, account, p, message=f"job {n}")
    data = await send(http, account, message="job 2")
    assert data["status"] == "queued"
    assert data["device"] == {"id": p.device.id, "deviceName": "Paced"}
    third = str(data["id"])
    assert await stored(db, third) == Stored("queued", None, p.device.id)
    assert await stored_history(db, third) == ["queued"]
    # Promised to the phone, not handed over yet: not its to take.
    await p.ack_refused(third)
    await p.expect_nothing()
    assert await stored(db, third) == Stored("queued", None, p.device.id)
    # The window passes: the job goes out without any new request.
    assert await p.next_job(timeout=8) == Job(third, RECIPIENT, "job 2")
    assert await stored(db, third) == Stored("dispatching", None, p.device.id)
    assert await stored_history(db, third) == ["queued", "dispatching"]
    await p.ack(third)
    await p.report(third, "sent")
    await p.report(third, "delivered")
    got = await get_message(http, account, third)
    assert got["status"] == "delivered"
    assert [h["status"] for h in got["history"]] == FULL_PATH


async def test_a_queued_job_goes_to_a_phone_that_connects_with_room(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    full = await driver(account, "Full", send_rate=1)
    await dispatch(http, account, full)
    data = await send(http, account, message="waiting")
    assert data["status"] == "queued" and data["device"]["id"] == full.device.id, data
    mid = str(data["id"])
    fresh = await driver(account, "Fresh")
    assert await fresh.next_job() == Job(mid, RECIPIENT, "waiting")
    assert await stored(db, mid) == Stored("dispatching", None, fresh.device.id)
    assert await stored_history(db, mid) == ["queued", "dispatching"]
    await full.expect_nothing()
    await fresh.ack(mid)
    assert await stored(db, mid) == Stored("sending", None, fresh.device.id)


# --- redelivery on reconnect -------------------------------------------------------------


async def test_a_job_never_acked_stays_with_its_phone_and_comes_again(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    p = await driver(account)
    mid = await dispatch(http, account, p)
    await p.disconnect()
    # While it was away the job stayed dispatching with this device, in PostgreSQL.
    assert await stored(db, mid) == Stored("dispatching", None, p.device.id)
    await p.connect()
    assert await p.next_job() == Job(mid, RECIPIENT, "Your code is 4829")
    await p.expect_nothing()
    await p.ack(mid)
    await p.report(mid, "sent")
    assert await stored_history(db, mid) == FULL_PATH[:4]


async def test_a_job_in_sending_stays_its_phones_across_a_reconnect(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    p = await driver(account)
    mid = await dispatch(http, account, p)
    await p.ack(mid)
    await p.disconnect()
    await p.connect(pending=[mid])
    assert await stored(db, mid) == Stored("sending", None, p.device.id)
    if p.redelivers_taken_jobs:
        # It may have lost the job with its socket: offered again.
        assert (await p.next_job()).id == mid
    # Its own job: no cancel (and, for a phone that keeps its jobs, no offer).
    await p.expect_nothing()
    # A repeated ack is taken and changes nothing; the reports go on.
    await p.ack(mid)
    assert await stored_history(db, mid) == FULL_PATH[:3]
    await p.report(mid, "sent")
    await p.report(mid, "delivered")
    assert await stored(db, mid) == Stored("delivered", None, p.device.id)


async def test_sent_and_delivered_jobs_are_not_offered_again(
        http: httpx.AsyncClient, account: Account, driver: DriverFactory) -> None:
    p = await driver(account)
    done = await dispatch(http, account, p, message="done")
    half = await dispatch(http, account, p, message="half")
    open_ = await dispatch(http, account, p, message="open")
    finished: list[tuple[str, list[CarrierReport]]] = [(done, ["sent", "delivered"]),
                                                      (half, ["sent"])]
    for mid, steps in finished:
        await p.ack(mid)
        for status in steps:
            await p.report(mid, status)
    await p.disconnect()
    await p.connect()
    assert (await p.next_job()).id == open_
    await p.expect_nothing()


# --- the clocks: reassign delay and ttl ------------------------------------------------


async def test_an_unacked_job_of_a_phone_away_past_the_reassign_delay_moves_to_another(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    other = await driver(account, "Other")
    first = await driver(account, "First")  # the freshest
    acked = await dispatch(http, account, first, message="acked")
    await first.ack(acked)
    unacked = await dispatch(http, account, first, message="not acked")
    await first.disconnect()

    if first.holds_listed_jobs:
        # The phone may have sent what it took: past the delay the job is
        # only asked back (section 8), and the other phone gets nothing...
        await other.expect_nothing(REASSIGN_S + 1)
        assert await stored(db, unacked) == Stored("dispatching", None, first.device.id)

        async def asked_back() -> bool:
            handback = await db.fetchval("SELECT handback FROM messages WHERE id = $1",
                                         uuid.UUID(unacked))
            return bool(handback == "requested")
        await wait_for(asked_back, what="the broker asked the job back")
    else:
        # Past the delay the job that was never acked goes to the other phone...
        assert await other.next_job(timeout=REASSIGN_S + 4) == Job(unacked, RECIPIENT,
                                                                   "not acked")
        assert await stored(db, unacked) == Stored("dispatching", None, other.device.id)
    # ...and the acked one stays with its device ("a job in sending stays").
    await other.expect_nothing()
    assert await stored(db, acked) == Stored("sending", None, first.device.id)

    # The first phone comes back still holding both: the unacked one is
    # cancelled, its own is offered again where the phone may have lost it.
    await first.connect(pending=[acked, unacked])
    if first.redelivers_taken_jobs:
        assert await first.next_job() == Job(acked, RECIPIENT, "acked")
    assert await first.expect_cancel(unacked) in {"reassigned", None}
    await first.expect_nothing()
    if first.holds_listed_jobs:
        # Still its job until it says it did not send it; then straight to
        # the other phone.
        await other.expect_nothing()
        assert await stored(db, unacked) == Stored("dispatching", None, first.device.id)
        await first.confirm_cancel(unacked)
        assert await other.next_job() == Job(unacked, RECIPIENT, "not acked")
        assert await stored(db, unacked) == Stored("dispatching", None, other.device.id)
        await first.expect_nothing()  # never back to the phone that gave it up
    # An ack from it now never gets the go-ahead: the SMS leaves one phone only.
    await first.ack_refused(unacked)
    assert await stored(db, unacked) == Stored("dispatching", None, other.device.id)
    await other.ack(unacked)
    assert await stored(db, unacked) == Stored("sending", None, other.device.id)


async def test_a_phone_back_within_the_reassign_delay_keeps_its_job(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    other = await driver(account, "Other")
    first = await driver(account, "First")
    mid = await dispatch(http, account, first)
    await first.disconnect()
    await first.connect(pending=[mid])
    assert (await first.next_job()).id == mid
    await first.ack(mid)
    # Acked in time: the delay passing later moves nothing.
    await other.expect_nothing(REASSIGN_S + 0.5)
    assert await stored(db, mid) == Stored("sending", None, first.device.id)


async def test_a_job_the_phone_never_took_expires_after_its_ttl_and_is_cancelled(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    p = await driver(account)
    taken = await dispatch(http, account, p, message="taken", ttl=TTL_S)
    await p.ack(taken)
    left = await dispatch(http, account, p, message="left", ttl=TTL_S)

    async def expired() -> bool:
        row = await stored(db, left)
        return (row.status, row.error) == ("failed", "expired")
    await wait_for(expired, timeout=TTL_S + 4, what="the un-acked job failed as expired")
    statuses = await stored_history(db, left)
    assert statuses == ["queued", "dispatching", "failed"]
    got = await get_message(http, account, left)
    assert got["status"] == "failed" and got["error"] == "expired"
    # The phone holding it is told to drop it...
    assert await p.expect_cancel(left) in {"expired", None}
    # ...and a late ack never gets the go-ahead.
    await p.ack_refused(left)
    assert await stored(db, left) == Stored("failed", "expired", p.device.id)
    # The one it took in time is untouched by its ttl.
    assert await stored(db, taken) == Stored("sending", None, p.device.id)


async def test_a_queued_message_whose_ttl_passes_expires_unsent(
        http: httpx.AsyncClient, account: Account, db: asyncpg.Connection,
        driver: DriverFactory) -> None:
    p = await driver(account, send_rate=1)
    await dispatch(http, account, p)
    data = await send(http, account, message="waits", ttl=TTL_S)
    assert data["status"] == "queued", data
    mid = str(data["id"])

    async def expired() -> bool:
        row = await stored(db, mid)
        return (row.status, row.error) == ("failed", "expired")
    await wait_for(expired, timeout=TTL_S + 4, what="the queued message failed as expired")
    assert await stored_history(db, mid) == ["queued", "failed"]
    await p.expect_nothing()  # never handed to the phone
