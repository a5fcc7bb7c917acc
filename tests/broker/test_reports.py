"""The group-commit decision (pure): reports applied in order to the locked
rows, as the one-at-a-time path would have."""

from __future__ import annotations

import uuid

from broker import store
from broker.delivery.reports import Report, decide
from protocol.lifecycle import Kind

PHONE, OTHER = uuid.uuid4(), uuid.uuid4()


def row(status: str, device: uuid.UUID = PHONE, error: str | None = None) -> store.Held:
    return store.Held(id=uuid.uuid4(), device_id=device, status=status, error=error)


def test_several_reports_for_one_message_in_one_batch_apply_in_order() -> None:
    m = row("dispatching")
    reports = [Report(PHONE, m.id, r, None) for r in ("ack", "sent", "delivered", "sent")]
    results, moved, history = decide(reports, {m.id: m})
    assert [r.outcome.kind for r in results] == [Kind.MOVE, Kind.MOVE, Kind.MOVE, Kind.LATE]
    assert [r.outcome.receipt for r in results] == ["sending", "sent", "delivered", "sent"]
    assert [(h[1]) for h in history] == ["sending", "sent", "delivered", "sent"]
    assert [(x.id, x.status) for x in moved] == [(m.id, "delivered")]


def test_another_devices_message_and_an_unknown_one_are_refused() -> None:
    mine, theirs = row("dispatching"), row("dispatching", device=OTHER)
    results, moved, history = decide(
        [Report(PHONE, theirs.id, "ack", None), Report(PHONE, uuid.uuid4(), "ack", None),
         Report(PHONE, mine.id, "ack", None)], {mine.id: mine, theirs.id: theirs})
    assert [(r.outcome.kind, r.outcome.code) for r in results] == [
        (Kind.REFUSE, "not_yours"), (Kind.REFUSE, "not_yours"), (Kind.MOVE, None)]
    assert [x.id for x in moved] == [mine.id] and len(history) == 1


def test_failed_keeps_the_phones_error_and_an_ack_after_it_is_a_cancel() -> None:
    m = row("sending")
    results, moved, history = decide(
        [Report(PHONE, m.id, "failed", "no signal"), Report(PHONE, m.id, "ack", None)],
        {m.id: m})
    assert results[0].outcome.kind is Kind.MOVE and moved[0].error == "no signal"
    assert results[1].outcome.kind is Kind.CANCEL and results[1].error == "no signal"
    assert history == [(m.id, "failed", PHONE, "no signal")]


def test_repeats_write_nothing() -> None:
    m = row("sent")
    results, moved, history = decide([Report(PHONE, m.id, "sent", None)] * 3, {m.id: m})
    assert all(r.outcome.kind is Kind.REPEAT for r in results)
    assert moved == [] and history == []
