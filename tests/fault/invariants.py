"""The soak's promises as pure checks over what it observed (no I/O).

The driver (`tests/fault/soak.py`) collects `Evidence` — what the HTTP
clients were answered, what PostgreSQL holds at the end, what each simulated
phone handed to its radio — and `check_all` turns it into one `Check` per
promise of contract section 5 and issue 4:

- nothing lost: every message answered 201 is in PostgreSQL;
- nothing doubled: one message per Idempotency-Key, never more;
- every message final;
- each SMS sent exactly once, summed over all phones, by its owner device,
  and its stored status is what that phone reported;
- every kind of phone in the run (WebSocket, SMS Gateway app) sent SMS, so
  the promises above hold for each kind, not just for the mix;
- every history is forward-only and begins with `queued`;
- webhooks (contract section 9), at a receiver that was down a while and
  answered 500 at random, across the kills: every history row arrived as
  exactly one event (deduped by `webhook-id`), none lost (a `sent` recorded
  after `delivered` fires none, by contract); one `webhook-id` per event,
  the same on every retry and after a restart; every request verified by
  the `standardwebhooks` library; each message's events first arrived in
  the order of its history; and the outbox ended with nothing owed.

"Final" for the soak: `delivered` or `failed`, or `sent` when `sent` was
the phone's last word about it (the simulated carrier then never reports a
delivery, so `sent` is as far as that message will ever go). A `sent`
message whose phone chose `delivered` is not final: its delivery report is
still in the phone's outbox.

Pure, so the checker itself is tested on hand-made evidence
(tests/fault/test_soak.py): a check that can never fail proves nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from protocol import lifecycle

RANK: Final[dict[str, int]] = {s: i for i, s in enumerate(lifecycle.STATUSES)}
# A report the lifecycle table records "late", after the status went final:
# "A late `sent` after `delivered` is recorded in the history but the status
# stays `delivered`" (contract section 5); the same holds after `failed`.
LATE_AFTER_FINAL: Final = frozenset({lifecycle.SENT})
SHOWN: Final = 5  # examples quoted per failed check


@dataclass(frozen=True)
class Row:
    """A message as PostgreSQL holds it at the end."""

    id: str
    status: str
    device_id: str | None
    body: str


@dataclass(frozen=True)
class Step:
    """One row of a message's history."""

    status: str
    at: dt.datetime


@dataclass(frozen=True)
class Arrival:
    """One request the soak's webhook receiver took, in the order it took
    them. `message_id` and `status` from the body's `data` (message events;
    None for the others)."""

    webhook_id: str
    type: str
    message_id: str | None
    status: str | None
    verified: bool  # by the standardwebhooks library, with an endpoint's secret
    answered: int  # the status code the receiver answered with

    @property
    def ok(self) -> bool:
        return 200 <= self.answered < 300


@dataclass
class Evidence:
    requested: int  # messages the driver meant to send, one Idempotency-Key each
    accepted: dict[str, str] = field(default_factory=dict)  # key -> id answered with 201
    key_rows: dict[str, str] = field(default_factory=dict)  # key -> message id, in PostgreSQL
    rows: dict[str, Row] = field(default_factory=dict)
    history: dict[str, list[Step]] = field(default_factory=dict)
    sends: dict[str, Counter[str]] = field(default_factory=dict)  # device id -> id -> SMS sent
    kinds: dict[str, str] = field(default_factory=dict)  # device id -> its transport
    outcomes: dict[str, str] = field(default_factory=dict)  # id -> what its phone reported
    answers: Counter[str] = field(default_factory=Counter)  # every HTTP answer, by kind
    unexpected: list[str] = field(default_factory=list)  # answers the soak cannot explain
    phone_views: dict[str, str] = field(default_factory=dict)  # id -> its phone's side
    fault_problems: list[str] = field(default_factory=list)
    phone_problems: list[str] = field(default_factory=list)
    # Webhooks: every request the receiver took, and the outbox's rows by
    # state at the end (after the bounded wait for it to drain).
    arrivals: list[Arrival] = field(default_factory=list)
    outbox: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


# What one check found: its problems (none: it holds) and what it saw if it holds.
Verdict = tuple[list[str], str]


def is_final(status: str, outcome: str | None) -> bool:
    """Final for the soak (see the module docstring)."""
    return lifecycle.is_final(status) or (status == lifecycle.SENT and outcome == lifecycle.SENT)


def history_problem(status: str, steps: list[Step]) -> str | None:
    """Why this history is not forward-only, or None. Ordered by `at`, then
    by rank (the first two rows of a message share its `created_at`)."""
    ordered = [s.status for s in sorted(steps, key=lambda s: (s.at, RANK.get(s.status, 99)))]
    if not ordered or ordered[0] != lifecycle.QUEUED:
        return f"begins with {ordered[0] if ordered else 'nothing'}, not queued: {ordered}"
    current = ordered[0]
    for step in ordered[1:]:
        if step not in RANK:
            return f"unknown status {step!r}: {ordered}"
        if lifecycle.is_final(current):
            if step in LATE_AFTER_FINAL:
                continue
            return f"{step} after final {current}: {ordered}"
        if not lifecycle.can_move(current, step):
            return f"{current} -> {step} is not a forward move: {ordered}"
        current = step
    if current != status:
        return f"history ends at {current} but the message is {status}: {ordered}"
    return None


def _check(name: str, problems: list[str], passed: str) -> Check:
    if not problems:
        return Check(name, True, passed)
    shown = "; ".join(problems[:SHOWN])
    more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
    return Check(name, False, f"{len(problems)} problem(s): {shown}{more}")


def all_accepted(e: Evidence) -> Verdict:
    problems = list(e.unexpected)
    missing = e.requested - len(e.accepted)
    if missing:
        problems.insert(0, f"{missing} of {e.requested} message(s) never answered 201")
    return problems, f"{len(e.accepted)} of {e.requested}, retries only on the expected answers"


def no_server_errors(e: Evidence) -> Verdict:
    problems = [f"{n} answer(s) {kind}" for kind, n in sorted(e.answers.items())
                if kind.startswith("5") and not kind.startswith("503")]
    return problems, "no 5xx other than 503"


def nothing_lost(e: Evidence) -> Verdict:
    problems = [f"key {key}: answered 201 with {mid}, not in PostgreSQL"
                for key, mid in sorted(e.accepted.items()) if mid not in e.rows]
    return problems, f"all {len(e.accepted)} messages answered 201 are in PostgreSQL"


def nothing_doubled(e: Evidence) -> Verdict:
    problems: list[str] = []
    if len(e.rows) > e.requested:
        problems.append(f"{len(e.rows)} messages for {e.requested} Idempotency-Keys")
    if len(e.rows) != len(e.key_rows):
        problems.append(f"{len(e.rows)} messages but {len(e.key_rows)} Idempotency-Key rows")
    keyed = set(e.key_rows.values())
    problems += [f"message {mid} has no Idempotency-Key row" for mid in sorted(e.rows)
                 if mid not in keyed]
    problems += [f"body {body!r} stored {n} times"
                 for body, n in Counter(r.body for r in e.rows.values()).items() if n > 1]
    problems += [f"key {key}: answered 201 with {mid} but the key made {e.key_rows.get(key)}"
                 for key, mid in sorted(e.accepted.items()) if e.key_rows.get(key) != mid]
    return problems, f"{len(e.rows)} messages for {len(e.key_rows)} keys ({e.requested} sent)"


def all_final(e: Evidence) -> Verdict:
    problems = [f"{mid} is {row.status} (its phone reported {e.outcomes.get(mid, 'nothing')};"
                f" {e.phone_views.get(mid, 'no phone view')})"
                for mid, row in sorted(e.rows.items())
                if not is_final(row.status, e.outcomes.get(mid))]
    return problems, f"all {len(e.rows)} final"


def sent_once(e: Evidence) -> Verdict:
    total: Counter[str] = Counter()
    senders: dict[str, list[str]] = defaultdict(list)
    for device, counts in e.sends.items():
        for mid, n in counts.items():
            if n:
                total[mid] += n
                senders[mid].append(device)
    problems = [f"phones sent {mid}, which PostgreSQL does not know" for mid in sorted(total)
                if mid not in e.rows]
    for mid, row in sorted(e.rows.items()):
        n = total[mid]
        if n > 1:
            problems.append(f"{mid} ({row.status}) sent {n} times, by {sorted(senders[mid])}")
        elif n == 0 and row.status in (lifecycle.SENT, lifecycle.DELIVERED):
            problems.append(f"{mid} is {row.status} but no phone sent it")
    return problems, (f"{sum(total.values())} SMS for {len(e.rows)} messages"
                      f" ({_plain(_sent_by_kind(e))}); max {max(total.values(), default=0)} per id")


def _sent_by_kind(e: Evidence) -> Counter[str]:
    """SMS sent by the phones of each kind (every kind in the run, 0 too)."""
    by_kind: Counter[str] = Counter(dict.fromkeys(e.kinds.values(), 0))
    for device, counts in e.sends.items():
        by_kind[e.kinds.get(device, "unknown")] += sum(counts.values())
    return by_kind


def every_kind_sent(e: Evidence) -> Verdict:
    by_kind = _sent_by_kind(e)
    problems = [f"no {kind} phone sent an SMS" for kind, n in sorted(by_kind.items()) if not n]
    return problems, f"SMS sent by kind: {_plain(by_kind)}"


def _plain(c: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "none"


def sent_by_owner(e: Evidence) -> Verdict:
    problems: list[str] = []
    for device, counts in sorted(e.sends.items()):
        for mid, n in sorted(counts.items()):
            row = e.rows.get(mid)
            if n and row is not None and row.device_id != device:
                problems.append(f"{mid} sent by {device} but owned by {row.device_id}")
            outcome = e.outcomes.get(mid)
            if (n and row is not None and outcome is not None
                    and is_final(row.status, outcome) and row.status != outcome):
                problems.append(f"{mid}: the phone reported {outcome}, stored {row.status}")
    return problems, "every SMS by the device that owns it, with the status its phone reported"


def forward_only(e: Evidence) -> Verdict:
    problems = []
    for mid, row in sorted(e.rows.items()):
        problem = history_problem(row.status, e.history.get(mid, []))
        if problem is not None:
            problems.append(f"{mid}: {problem}")
    return problems, f"{sum(len(h) for h in e.history.values())} history rows"


MESSAGE_EVENT: Final = "message."


def fires(steps: list[Step]) -> list[Step]:
    """The history rows that fire an event, in the history's order: all but
    a `sent` recorded after `delivered` (contract section 9), i.e. by a later
    transaction (`at` is the writing transaction's start); the two written
    together both fire (migration 0007)."""
    delivered = [s.at for s in steps if s.status == lifecycle.DELIVERED]
    return [s for s in sorted(steps, key=lambda s: (s.at, RANK.get(s.status, 99)))
            if not (s.status == lifecycle.SENT and any(at < s.at for at in delivered))]


def delivered_events(e: Evidence) -> list[Arrival]:
    """The receiver's dedup: the first 2xx-answered request per webhook-id,
    in arrival order."""
    seen: set[str] = set()
    out = []
    for a in e.arrivals:
        if a.ok and a.webhook_id not in seen:
            seen.add(a.webhook_id)
            out.append(a)
    return out


def _message_events(arrivals: list[Arrival]) -> list[Arrival]:
    return [a for a in arrivals if a.type.startswith(MESSAGE_EVENT) and a.message_id is not None]


def events_none_lost(e: Evidence) -> Verdict:
    got: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    for a in _message_events(delivered_events(e)):
        if a.type != MESSAGE_EVENT + (a.status or ""):
            problems.append(f"{a.webhook_id}: type {a.type} but data.status {a.status}")
        got[(a.message_id or "", a.status or "")] += 1
    owed: Counter[tuple[str, str]] = Counter()
    for mid in e.rows:
        for step in fires(e.history.get(mid, [])):
            owed[(mid, step.status)] += 1
    for (mid, status), n in sorted(owed.items()):
        if got[(mid, status)] < n:
            problems.append(f"{mid}: message.{status} never arrived")
    for (mid, status), n in sorted(got.items()):
        if n > owed[(mid, status)]:
            problems.append(f"{mid}: message.{status} arrived {n} times (deduped),"
                            f" {owed[(mid, status)]} history row(s)")
    return problems, (f"{sum(owed.values())} history rows, each one deduped event"
                      f" ({sum(got.values())} message events)")


def events_one_id(e: Evidence) -> Verdict:
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    events: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for a in _message_events(e.arrivals):
        ids[(a.message_id or "", a.status or "")].add(a.webhook_id)
        events[a.webhook_id].add((a.message_id or "", a.status or ""))
    rows: Counter[tuple[str, str]] = Counter(
        (mid, s.status) for mid in e.rows for s in fires(e.history.get(mid, [])))
    problems = [f"{mid}: message.{status} came under {len(got)} webhook-ids {sorted(got)}"
                for (mid, status), got in sorted(ids.items()) if len(got) > max(1, rows[(mid, status)])]
    problems += [f"webhook-id {wid} carried {sorted(got)}" for wid, got in sorted(events.items())
                 if len(got) > 1]
    retried = sum(1 for n in Counter(a.webhook_id for a in e.arrivals).values() if n > 1)
    return problems, (f"{len(events)} webhook-ids, one per event; {retried} of them"
                      " sent more than once, always under the same id")


def events_verified(e: Evidence) -> Verdict:
    bad = [a for a in e.arrivals if not a.verified]
    problems = [f"{len(bad)} of {len(e.arrivals)} request(s) failed standardwebhooks"
                f" verification, e.g. {bad[0].webhook_id} ({bad[0].type})"] if bad else []
    if not e.arrivals:
        problems.append("the receiver got no request at all")
    return problems, f"all {len(e.arrivals)} requests verified by standardwebhooks"


def events_in_order(e: Evidence) -> Verdict:
    firsts: dict[str, list[str]] = defaultdict(list)
    for a in _message_events(delivered_events(e)):
        statuses = firsts[a.message_id or ""]
        if a.status not in statuses:
            statuses.append(a.status or "")
    problems = []
    for mid, arrived in sorted(firsts.items()):
        history = [s.status for s in fires(e.history.get(mid, []))]
        expected = [s for s in history if s in arrived]
        if arrived != expected:
            problems.append(f"{mid}: arrived {arrived}, history {history}")
    return problems, f"{len(firsts)} messages, each one's events in its history's order"


def outbox_drained(e: Evidence) -> Verdict:
    problems = [f"{e.outbox[state]} outbox row(s) {state}" for state in ("pending", "failed")
                if e.outbox[state]]
    if not e.outbox:
        problems.append("the outbox is empty: no event was written")
    return problems, f"outbox: {_plain(e.outbox)}"


def recovered(e: Evidence) -> Verdict:
    return e.fault_problems, "/health ok again after each kill and PostgreSQL restart"


def phones_ran(e: Evidence) -> Verdict:
    return e.phone_problems, "every device-sim ran to the end"


CHECKS: Final[dict[str, Callable[[Evidence], Verdict]]] = {
    "every send answered 201": all_accepted,
    "no 500 answers": no_server_errors,
    "nothing lost": nothing_lost,
    "nothing doubled": nothing_doubled,
    "every message final": all_final,
    "each SMS sent exactly once": sent_once,
    "every kind of phone sent SMS": every_kind_sent,
    "sent by its owner, stored as reported": sent_by_owner,
    "history forward-only from queued": forward_only,
    "broker healthy after every fault": recovered,
    "phones kept running": phones_ran,
    "webhooks: no event lost": events_none_lost,
    "webhooks: one webhook-id per event": events_one_id,
    "webhooks: every request verified": events_verified,
    "webhooks: each message's order kept": events_in_order,
    "webhooks: outbox drained": outbox_drained,
}


def check_all(e: Evidence) -> list[Check]:
    return [_check(name, *verdict(e)) for name, verdict in CHECKS.items()]


def final_counts(rows: Mapping[str, Row]) -> Counter[str]:
    return Counter(r.status for r in rows.values())
