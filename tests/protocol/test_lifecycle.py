"""The message lifecycle (contract section 5): every (status, report) pair.

The expected table below is written from the contract's words, not copied
from protocol/lifecycle.py, so that a change to TABLE has to be made twice
(there and here) and argued for.
"""

from __future__ import annotations

import itertools
import typing

import pytest

from protocol import frames
from protocol.lifecycle import (
    FINAL,
    REDELIVERED,
    REPORTS,
    STATUSES,
    TABLE,
    TRANSITIONS,
    Kind,
    Outcome,
    apply,
    can_move,
    is_final,
    moves,
)

ORDER = ("queued", "dispatching", "sending", "sent", "delivered", "failed")
# Rank along the happy path; `failed` is final and reachable from every
# state before `delivered`, so it ranks above them all.
RANK = {status: rank for rank, status in enumerate(ORDER)}


def move(new: str) -> Outcome:
    return Outcome(Kind.MOVE, new_status=new, receipt=new)


def repeat(receipt: str) -> Outcome:
    return Outcome(Kind.REPEAT, receipt=receipt)


def late(status: str) -> Outcome:
    return Outcome(Kind.LATE, new_status=status, receipt=status)


def refuse(code: str) -> Outcome:
    return Outcome(Kind.REFUSE, code=code)


CANCEL = Outcome(Kind.CANCEL)

EXPECTED: dict[tuple[str, str], Outcome] = {
    # --- ack: "the phone took the job; the broker stores `sending` and answers
    # with a receipt". The receipt is the go-ahead to send.
    # A queued message has no `send` frame out yet: no phone can hold it.
    ("queued", "ack"): refuse("not_yours"),
    ("dispatching", "ack"): move("sending"),
    # "the ack may repeat; its receipt is the go-ahead": the same receipt again.
    ("sending", "ack"): repeat("sending"),
    # Already sent: the receipt says so, and the phone does not send again.
    ("sent", "ack"): repeat("sent"),
    ("delivered", "ack"): repeat("delivered"),
    # Expired, or failed elsewhere: "it gets a `cancel`, never a receipt,
    # so the SMS leaves one phone only".
    ("failed", "ack"): CANCEL,
    # --- sent: "the phone sends the SMS only after the receipt for its ack";
    # a report on a job whose ack was never stored is refused.
    ("queued", "sent"): refuse("not_acked"),
    ("dispatching", "sent"): refuse("not_acked"),
    ("sending", "sent"): move("sent"),
    ("sent", "sent"): repeat("sent"),
    # "A late `sent` after `delivered` is recorded in the history but the
    # status stays `delivered`."
    ("delivered", "sent"): late("sent"),
    # The contract is silent; the SMS did leave, so it is recorded like the
    # late `sent` above, and the final status stays (final means final).
    ("failed", "sent"): late("sent"),
    # --- delivered
    ("queued", "delivered"): refuse("not_acked"),
    ("dispatching", "delivered"): refuse("not_acked"),
    # A lost `sent` report is skipped over: forward is forward.
    ("sending", "delivered"): move("delivered"),
    ("sent", "delivered"): move("delivered"),
    ("delivered", "delivered"): repeat("delivered"),
    ("failed", "delivered"): late("delivered"),
    # --- failed: "from any state before delivered"
    ("queued", "failed"): refuse("not_yours"),
    # The phone could not take the job at all (no SIM, no permission, ...).
    ("dispatching", "failed"): move("failed"),
    ("sending", "failed"): move("failed"),
    ("sent", "failed"): move("failed"),
    # Not before `delivered`: transitions only move forward.
    ("delivered", "failed"): refuse("refused"),
    ("failed", "failed"): repeat("failed"),
}

ALL_PAIRS = list(itertools.product(STATUSES, REPORTS))


def test_statuses_and_reports_are_the_contracts() -> None:
    assert STATUSES == ORDER
    assert set(REPORTS) == {"ack", "sent", "delivered", "failed"}
    # A `status` frame carries exactly the reports other than `ack`.
    assert set(typing.get_args(frames.ReportedStatus)) == set(REPORTS) - {"ack"}


def test_expected_table_is_complete() -> None:
    assert set(EXPECTED) == set(ALL_PAIRS)
    assert len(ALL_PAIRS) == len(STATUSES) * len(REPORTS) == 24


def test_table_covers_every_pair_exactly() -> None:
    assert set(TABLE) == set(ALL_PAIRS)
    assert len(TABLE) == len(ALL_PAIRS)


@pytest.mark.parametrize(("status", "report"), ALL_PAIRS, ids=[f"{s}-{r}" for s, r in ALL_PAIRS])
def test_every_pair(status: str, report: str) -> None:
    assert apply(status, report) == EXPECTED[(status, report)]


@pytest.mark.parametrize(("status", "report"), ALL_PAIRS, ids=[f"{s}-{r}" for s, r in ALL_PAIRS])
def test_outcome_is_well_formed(status: str, report: str) -> None:
    outcome = apply(status, report)
    match outcome.kind:
        case Kind.MOVE:
            assert outcome.new_status is not None
            assert can_move(status, outcome.new_status)
            assert RANK[outcome.new_status] > RANK[status]
            assert outcome.receipt == outcome.new_status
            assert outcome.code is None
        case Kind.REPEAT:
            # Nothing changes; the receipt tells the phone where the job stands.
            assert outcome.new_status is None
            assert outcome.receipt in STATUSES
            assert outcome.code is None
        case Kind.LATE:
            # Only a final message takes late reports; its status never moves.
            assert is_final(status)
            assert outcome.new_status in STATUSES
            assert not can_move(status, outcome.new_status)
            assert outcome.receipt == outcome.new_status
        case Kind.CANCEL:
            assert (outcome.new_status, outcome.receipt, outcome.code) == (None, None, None)
        case Kind.REFUSE:
            assert outcome.new_status is None and outcome.receipt is None
            assert outcome.code in {frames.NOT_ACKED, frames.NOT_YOURS, frames.REFUSED}


def test_move_outcomes_are_transitions() -> None:
    moves = [(s, o.new_status) for (s, _), o in TABLE.items() if o.kind is Kind.MOVE]
    assert moves
    for current, new in moves:
        assert new is not None and can_move(current, new), (current, new)


def test_a_receipt_never_goes_with_a_cancel_or_refusal() -> None:
    for outcome in TABLE.values():
        if outcome.kind in (Kind.CANCEL, Kind.REFUSE):
            assert outcome.receipt is None


def test_ack_on_a_failed_job_is_cancel_never_a_receipt() -> None:
    assert apply("failed", "ack").kind is Kind.CANCEL
    assert apply("failed", "ack").receipt is None


def test_reports_before_the_ack_are_refused() -> None:
    for status in ("queued", "dispatching"):
        for report in ("sent", "delivered"):
            assert apply(status, report) == refuse("not_acked")


def test_failed_from_every_state_before_delivered() -> None:
    before = ORDER[: ORDER.index("delivered")]
    for status in before:
        assert can_move(status, "failed"), status
    assert not can_move("delivered", "failed")


def test_repeated_report_changes_nothing() -> None:
    # Reporting the status a message already has is a repeat with the same receipt.
    for status in STATUSES:
        if status in REPORTS:
            assert apply(status, status) == repeat(status)


def test_transitions_only_move_forward() -> None:
    assert set(TRANSITIONS) == set(STATUSES)
    for current, targets in TRANSITIONS.items():
        for new in targets:
            assert new in STATUSES
            assert RANK[new] > RANK[current], (current, new)


def test_happy_path_is_a_chain_of_transitions() -> None:
    for current, new in itertools.pairwise(ORDER[: ORDER.index("delivered") + 1]):
        assert can_move(current, new)


def test_every_status_is_reachable_from_queued() -> None:
    seen, todo = {"queued"}, ["queued"]
    while todo:
        for new in TRANSITIONS[todo.pop()]:
            if new not in seen:
                seen.add(new)
                todo.append(new)
    assert seen == set(STATUSES)


def test_final_statuses_have_no_outgoing_transitions() -> None:
    assert {"delivered", "failed"} == FINAL
    for status in STATUSES:
        assert is_final(status) == (status in FINAL)
        if is_final(status):
            assert TRANSITIONS[status] == frozenset()
        else:
            assert TRANSITIONS[status], status


def test_no_move_to_itself() -> None:
    for status in STATUSES:
        assert not can_move(status, status)


def test_can_move_unknown_status_is_false() -> None:
    assert not can_move("nope", "sent")
    assert not can_move("queued", "nope")


def test_redelivered_are_the_jobs_out_with_a_phone_and_not_final() -> None:
    assert {"dispatching", "sending"} == REDELIVERED
    assert not REDELIVERED & FINAL


@pytest.mark.parametrize(("status", "report"), [("queued", "sending"), ("nope", "ack"), ("sent", "")])
def test_apply_unknown_pair_raises_value_error(status: str, report: str) -> None:
    with pytest.raises(ValueError, match="unknown status/report pair"):
        apply(status, report)


@pytest.mark.parametrize(("reports", "starts"), [
    (("ack",), {"dispatching"}),
    (("sent",), {"sending"}),
    # A lost `sent` is skipped over: `delivered` moves from both.
    (("delivered",), {"sending", "sent"}),
    (("failed",), {"dispatching", "sending", "sent"}),
    (("ack", "sent"), {"dispatching"}),
    (("sent", "delivered"), {"sending"}),
    (("ack", "sent", "delivered"), {"dispatching"}),
    (("ack", "failed"), {"dispatching"}),
])
def test_moves_are_the_statuses_every_report_moves_on_from(
        reports: tuple[str, ...], starts: set[str]) -> None:
    found = moves(reports)
    assert found is not None
    assert found[0] == starts
    assert [outcome.new_status for outcome in found[1]] == [
        "sending" if report == "ack" else report for report in reports]


@pytest.mark.parametrize("reports", [
    (),
    ("ack", "ack"),  # the second is a repeat
    ("delivered", "sent"),  # late, not a move
    ("delivered", "failed"),  # refused
    ("failed", "ack"),  # a cancel
])
def test_no_moves_when_some_report_does_not_move_the_message(reports: tuple[str, ...]) -> None:
    assert moves(reports) is None


@pytest.mark.parametrize("reports", [
    reports for n in (1, 2, 3) for reports in itertools.product(REPORTS, repeat=n)])
def test_moves_agree_with_the_contracts_table(reports: tuple[str, ...]) -> None:
    """Every status from which the contract's table moves the message on at
    every report is a start, and no other."""
    def outcomes_from(status: str) -> list[Outcome] | None:
        found = []
        for report in reports:
            outcome = EXPECTED[(status, report)]
            if outcome.kind is not Kind.MOVE:
                return None
            found.append(outcome)
            status = typing.cast(str, outcome.new_status)
        return found

    expected = {status for status in STATUSES if outcomes_from(status) is not None}
    found = moves(reports)
    if not expected:
        assert found is None
        return
    assert found is not None
    assert found[0] == expected
    for status in expected:
        assert list(found[1]) == outcomes_from(status)
