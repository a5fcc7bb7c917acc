"""The message lifecycle (contract section 5) as data.

``queued -> dispatching -> sending -> sent -> delivered``, and ``failed`` from
any state before ``delivered``. Everything that decides how a status may move
lives in this module: the broker looks moves up here and never compares
status strings itself. An illegal move is a failed lookup, turned into a named
outcome.
"""

from __future__ import annotations

import enum
import functools
from typing import Final, Literal

import msgspec

MessageStatus = Literal["queued", "dispatching", "sending", "sent", "delivered", "failed"]
Report = Literal["ack", "sent", "delivered", "failed"]

QUEUED: Final = "queued"
DISPATCHING: Final = "dispatching"
SENDING: Final = "sending"
SENT: Final = "sent"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"

STATUSES: Final[tuple[MessageStatus, ...]] = (QUEUED, DISPATCHING, SENDING, SENT, DELIVERED, FAILED)
REPORTS: Final[tuple[Report, ...]] = ("ack", SENT, DELIVERED, FAILED)
FINAL: Final[frozenset[str]] = frozenset({DELIVERED, FAILED})
# Jobs a phone gets again when it connects (contract section 5).
REDELIVERED: Final[frozenset[str]] = frozenset({DISPATCHING, SENDING})

# Moves the broker itself may make (dispatch, expiry, phone reports).
# Forward only: no status ever returns to an earlier one.
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    QUEUED: frozenset({DISPATCHING, FAILED}),
    DISPATCHING: frozenset({SENDING, FAILED}),
    SENDING: frozenset({SENT, DELIVERED, FAILED}),
    SENT: frozenset({DELIVERED, FAILED}),
    DELIVERED: frozenset(),
    FAILED: frozenset(),
}


def is_final(status: str) -> bool:
    return status in FINAL


def can_move(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


class Kind(enum.Enum):
    MOVE = "move"  # status changes; one history row; receipt
    REPEAT = "repeat"  # nothing changes; the same receipt again
    LATE = "late"  # recorded in the history only (e.g. `sent` after `delivered`); receipt
    CANCEL = "cancel"  # the job is no longer this phone's to send: `cancel`, never a receipt
    REFUSE = "refuse"  # an `error` frame; nothing changes


class Outcome(msgspec.Struct, frozen=True):
    kind: Kind
    new_status: str | None = None  # MOVE: the stored status; LATE: the history row's status
    receipt: str | None = None  # status carried by the receipt (MOVE, REPEAT, LATE)
    code: str | None = None  # REFUSE: the error frame's code


def _move(new: str) -> Outcome:
    return Outcome(Kind.MOVE, new_status=new, receipt=new)


def _repeat(receipt: str) -> Outcome:
    return Outcome(Kind.REPEAT, receipt=receipt)


def _late(status: str) -> Outcome:
    return Outcome(Kind.LATE, new_status=status, receipt=status)


# Why a report is refused (on the WebSocket, the `error` frame's code).
REFUSED_NOT_YOURS: Final = "not_yours"  # not this device's job, or never handed to a phone
REFUSED_NOT_ACKED: Final = "not_acked"  # a status before the ack's receipt
REFUSED_FINAL: Final = "refused"  # not allowed in the job's current status

NOT_YOURS: Final = Outcome(Kind.REFUSE, code=REFUSED_NOT_YOURS)
_NOT_ACKED = Outcome(Kind.REFUSE, code=REFUSED_NOT_ACKED)
_FINAL = Outcome(Kind.REFUSE, code=REFUSED_FINAL)
_CANCEL = Outcome(Kind.CANCEL)

# (current status, phone report) -> outcome. Every pair is listed; a missing
# pair is a bug caught by the tests, not a silent default.
TABLE: Final[dict[tuple[str, str], Outcome]] = {
    # ack: "the phone took the job"; its receipt is the go-ahead to send.
    (QUEUED, "ack"): NOT_YOURS,  # never handed to a phone
    (DISPATCHING, "ack"): _move(SENDING),
    (SENDING, "ack"): _repeat(SENDING),
    # Already sent: the receipt says so, which tells the phone not to send again.
    (SENT, "ack"): _repeat(SENT),
    (DELIVERED, "ack"): _repeat(DELIVERED),
    (FAILED, "ack"): _CANCEL,  # expired or failed elsewhere: drop it unsent
    # sent
    (QUEUED, SENT): _NOT_ACKED,
    (DISPATCHING, SENT): _NOT_ACKED,  # the phone sends only after the ack's receipt
    (SENDING, SENT): _move(SENT),
    (SENT, SENT): _repeat(SENT),
    (DELIVERED, SENT): _late(SENT),  # "recorded in the history but the status stays delivered"
    (FAILED, SENT): _late(SENT),  # the SMS did leave; the final status stays
    # delivered
    (QUEUED, DELIVERED): _NOT_ACKED,
    (DISPATCHING, DELIVERED): _NOT_ACKED,
    (SENDING, DELIVERED): _move(DELIVERED),  # a lost `sent` report is skipped over
    (SENT, DELIVERED): _move(DELIVERED),
    (DELIVERED, DELIVERED): _repeat(DELIVERED),
    (FAILED, DELIVERED): _late(DELIVERED),
    # failed: "from any state before delivered"
    (QUEUED, FAILED): NOT_YOURS,
    (DISPATCHING, FAILED): _move(FAILED),  # the phone could not take it (no SIM, ...)
    (SENDING, FAILED): _move(FAILED),
    (SENT, FAILED): _move(FAILED),
    (DELIVERED, FAILED): _FINAL,
    (FAILED, FAILED): _repeat(FAILED),
}


def apply(current: str, report: str) -> Outcome:
    """What a phone's ``report`` does to a message whose status is ``current``."""
    try:
        return TABLE[(current, report)]
    except KeyError:
        raise ValueError(f"unknown status/report pair {current!r}/{report!r}") from None


@functools.cache
def moves(reports: tuple[str, ...]) -> tuple[frozenset[str], tuple[Outcome, ...]] | None:
    """The statuses from which every report of ``reports``, applied in
    order, moves the message on, and those moves' outcomes (the same from
    each such status: a move's new status is the report's); None if there
    is no such status. What a batch of reports can write without reading
    its messages first: a status these moves start from is all it checks."""
    starts: set[str] = set()
    found: tuple[Outcome, ...] | None = None
    for start in STATUSES:
        status: str = start
        outcomes: list[Outcome] = []
        for report in reports:
            outcome = TABLE[(status, report)]
            if outcome.kind is not Kind.MOVE or outcome.new_status is None:
                break
            outcomes.append(outcome)
            status = outcome.new_status
        else:
            if found is None:
                found = tuple(outcomes)
            if tuple(outcomes) == found:
                starts.add(start)
    return (frozenset(starts), found) if found is not None and reports else None
