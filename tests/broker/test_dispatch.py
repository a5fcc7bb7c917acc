"""broker/delivery/dispatch.py: the engine's door for transports, with a real
pool on the PostgreSQL of the test session and phones on RecordingChannels.

`answer` turns a report's lifecycle outcome into what the phone is told and
frees its in-flight room; `on_connect` redelivers a phone's open jobs and
cancels what it holds that is no longer its own (contract sections 4, 5).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broker import store
from broker.delivery.channel import Answer, Cancel, CloseReason, Receipt, Refusal
from broker.delivery.dispatch import Dispatcher, parse_id
from broker.delivery.presence import Connection, Presence
from broker.delivery.reports import Result
from protocol import lifecycle
from tests.conftest import (
    RecordingChannel,
    Stored,
    drained,
    new_account,
    new_device,
    new_message,
    online,
    stored,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def dispatcher(pool: store.Pool) -> AsyncIterator[Dispatcher]:
    d = Dispatcher(pool, Presence())
    try:
        yield d
    finally:
        await d.close()


def unstored_phone(presence: Presence,
                   window: int = 0) -> tuple[Connection, RecordingChannel]:
    """A connected phone with no rows (for what needs no database)."""
    return online(presence, store.DeviceRow(
        id=uuid.uuid4(), account_id=uuid.uuid4(), name="p", token_hash=b"", send_rate=0,
        active=True, last_seen_at=None, health=None, app_version=None), window)


# --- parse_id ---------------------------------------------------------------


def test_parse_id_takes_a_uuid_and_nothing_else() -> None:
    mid = uuid.uuid4()
    assert parse_id(str(mid)) == mid
    for raw in ("", "not-a-uuid", str(mid)[:-1], str(mid) + "0"):
        assert parse_id(raw) is None


# --- answer -----------------------------------------------------------------

# protocol/README.md section 4, "What each report does", cell by cell: a
# receipt with the status where the job stands, a `cancel`, or an `error`.
README_TABLE: dict[tuple[str, str], Answer] = {
    ("queued", "ack"): Refusal("not_yours"),
    ("queued", "sent"): Refusal("not_acked"),
    ("queued", "delivered"): Refusal("not_acked"),
    ("queued", "failed"): Refusal("not_yours"),
    ("dispatching", "ack"): Receipt("sending"),
    ("dispatching", "sent"): Refusal("not_acked"),
    ("dispatching", "delivered"): Refusal("not_acked"),
    ("dispatching", "failed"): Receipt("failed"),
    ("sending", "ack"): Receipt("sending"),
    ("sending", "sent"): Receipt("sent"),
    ("sending", "delivered"): Receipt("delivered"),
    ("sending", "failed"): Receipt("failed"),
    ("sent", "ack"): Receipt("sent"),
    ("sent", "sent"): Receipt("sent"),
    ("sent", "delivered"): Receipt("delivered"),
    ("sent", "failed"): Receipt("failed"),
    ("delivered", "ack"): Receipt("delivered"),
    ("delivered", "sent"): Receipt("sent"),
    ("delivered", "delivered"): Receipt("delivered"),
    ("delivered", "failed"): Refusal("refused"),
    ("failed", "ack"): Cancel("expired"),  # the reason is the job's stored error
    ("failed", "sent"): Receipt("sent"),
    ("failed", "delivered"): Receipt("delivered"),
    ("failed", "failed"): Receipt("failed"),
}


def test_the_readme_table_names_every_pair() -> None:
    assert set(README_TABLE) == {(s, r) for s in lifecycle.STATUSES for r in lifecycle.REPORTS}


@pytest.mark.parametrize(("status", "report"), sorted(README_TABLE))
async def test_answer_tells_the_phone_what_the_contract_says(
        dispatcher: Dispatcher, status: str, report: str) -> None:
    conn, _ = unstored_phone(dispatcher.presence)
    result = Result(lifecycle.apply(status, report), "expired")
    assert dispatcher.answer(conn, str(uuid.uuid4()), result) == README_TABLE[(status, report)]


async def test_a_cancel_without_a_stored_error_says_failed(dispatcher: Dispatcher) -> None:
    conn, _ = unstored_phone(dispatcher.presence)
    result = Result(lifecycle.apply("failed", "ack"), None)
    assert dispatcher.answer(conn, str(uuid.uuid4()), result) == Cancel("failed")


async def test_an_answer_frees_a_full_window_and_sends_what_was_queued(
        db: asyncpg.Connection, dispatcher: Dispatcher) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    held = await new_message(db, acc, dev, "dispatching")
    waiting = await new_message(db, acc, dev, "queued")
    conn, channel = online(dispatcher.presence, dev, window=1)
    conn.inflight.add(held)
    now = time.monotonic()
    assert dispatcher.presence.pick(acc.id, now) == (conn, False)  # the window is full

    answer = dispatcher.answer(conn, str(held), Result(lifecycle.apply("dispatching", "ack"),
                                                       None))

    assert answer == Receipt("sending")
    assert held not in conn.inflight
    assert dispatcher.presence.pick(acc.id, time.monotonic()) == (conn, True)  # room again
    # The room goes at once to the job that waited as queued: the drain the
    # answer started hands it, not a later one.
    await dispatcher.queue._drains[acc.id]
    assert [j.id for j in channel.offered] == [str(waiting)]
    assert await stored(db, waiting) == Stored("dispatching", None, str(dev.id))
    assert conn.inflight == {waiting}


async def test_an_answer_in_a_window_with_room_starts_no_drain(
        db: asyncpg.Connection, dispatcher: Dispatcher) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    held = await new_message(db, acc, dev, "dispatching")
    waiting = await new_message(db, acc, dev, "queued")
    conn, channel = online(dispatcher.presence, dev, window=2)
    conn.inflight.add(held)
    dispatcher.answer(conn, str(held), Result(lifecycle.apply("dispatching", "ack"), None))
    assert held not in conn.inflight
    assert dispatcher.queue._drains == {}
    assert channel.offered == [] and await stored(db, waiting) == Stored("queued", None, str(dev.id))


async def test_an_answer_to_a_malformed_id_leaves_the_window_alone(
        dispatcher: Dispatcher) -> None:
    conn, _ = unstored_phone(dispatcher.presence, window=1)
    held = uuid.uuid4()
    conn.inflight.add(held)
    answer = dispatcher.answer(conn, "not-a-uuid", Result(lifecycle.NOT_YOURS, None))
    assert answer == Refusal("not_yours")
    assert conn.inflight == {held} and dispatcher.queue._drains == {}


# --- report -----------------------------------------------------------------


async def test_a_report_on_a_malformed_id_is_refused_without_the_database(
        dispatcher: Dispatcher) -> None:
    conn, _ = unstored_phone(dispatcher.presence)
    result = await dispatcher.report(conn.device_id, "nope", "ack")
    assert result.outcome == lifecycle.NOT_YOURS


async def test_a_report_is_committed_then_answered(
        db: asyncpg.Connection, dispatcher: Dispatcher) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    mid = await new_message(db, acc, dev, "dispatching")
    conn, _ = online(dispatcher.presence, dev)
    result = await dispatcher.report(conn.device_id, str(mid), "ack")
    assert await stored(db, mid) == Stored("sending", None, str(dev.id))
    assert dispatcher.answer(conn, str(mid), result) == Receipt("sending")


# --- on_connect: redelivery and cancels --------------------------------------


async def test_on_connect_redelivers_the_phones_open_jobs_oldest_first(
        db: asyncpg.Connection, dispatcher: Dispatcher) -> None:
    acc = await new_account(db)
    dev, other = await new_device(db, acc), await new_device(db, acc, "other")
    first = await new_message(db, acc, dev, "dispatching")
    second = await new_message(db, acc, dev, "sending")
    await new_message(db, acc, dev, "sent")  # no job left to hand: only reports
    await new_message(db, acc, other, "dispatching")  # another phone's
    conn, channel = online(dispatcher.presence, dev)
    await dispatcher.on_connect(conn, [])
    await drained(dispatcher.queue)
    assert [j.id for j in channel.offered] == [str(first), str(second)]
    assert channel.offered[0].recipient == "+16502530000"
    assert channel.offered[0].message == "hello"
    assert conn.inflight == {first, second}
    assert channel.cancelled == []


async def test_on_connect_cancels_what_the_phone_holds_that_is_no_longer_its_own(
        db: asyncpg.Connection, dispatcher: Dispatcher) -> None:
    acc, stranger = await new_account(db), await new_account(db)
    dev, other = await new_device(db, acc), await new_device(db, acc, "other")
    theirs = await new_device(db, stranger)
    reassigned = await new_message(db, acc, other, "dispatching")
    expired = await new_message(db, acc, dev, "failed", error="expired")
    failed = await new_message(db, acc, dev, "failed")
    delivered = await new_message(db, acc, dev, "delivered")
    sent = await new_message(db, acc, dev, "sent")
    mine = await new_message(db, acc, dev, "sending")
    elsewhere = await new_message(db, stranger, theirs, "dispatching")
    unknown = uuid.uuid4()
    pending = [str(reassigned), str(expired), str(failed), str(delivered), str(sent), str(mine),
               str(elsewhere), str(unknown), "garbage"]
    conn, channel = online(dispatcher.presence, dev)

    await dispatcher.on_connect(conn, pending)
    await drained(dispatcher.queue)

    assert [j.id for j in channel.offered] == [str(mine)]  # still its own: sent again
    assert channel.cancelled == [
        (str(reassigned), "reassigned"),
        (str(expired), "expired"),
        (str(failed), "failed"),
        (str(delivered), "done"),
        # `sent`: its delivery report may still come, so no cancel.
        (str(elsewhere), "unknown"),  # another account's job is not even named
        (str(unknown), "unknown"),
        ("garbage", "unknown"),
    ]


async def test_on_connect_of_a_deactivated_phone_closes_it(
        db: asyncpg.Connection, dispatcher: Dispatcher) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    await new_message(db, acc, dev, "dispatching")
    conn, channel = online(dispatcher.presence, dev)
    assert await store.deactivate_device(db, dev.id)
    await dispatcher.on_connect(conn, [])
    assert channel.closed == [CloseReason.DEACTIVATED]
    assert channel.offered == []
    assert dispatcher.presence.get(dev.id) is None


async def test_on_connect_drains_the_accounts_queue(
        db: asyncpg.Connection, dispatcher: Dispatcher) -> None:
    acc = await new_account(db)
    dev = await new_device(db, acc)
    queued = await new_message(db, acc, dev, "queued")
    conn, channel = online(dispatcher.presence, dev)
    await dispatcher.on_connect(conn, [])
    await drained(dispatcher.queue)
    assert [j.id for j in channel.offered] == [str(queued)]
    assert await stored(db, queued) == Stored("dispatching", None, str(dev.id))
