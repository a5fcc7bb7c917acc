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
  the order of its history; and the outbox ended with nothing owed;
- no phone held by two nodes (CONTRACT section 13), from samples of the
  `presence` table taken through the run and once at the end, beside what
  each simulated phone recorded of its connections: every row is held by a
  live node (a running process, under the epoch and the unexpired lease of
  that node's row), bar a killed node's for as long as its lease may take
  to lapse and be reaped; each phone's row names the node it is connected to
  (a phone connected nowhere has no row), bar the short window of a
  reconnect; and every job reached its phone through the node its row
  named.

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
from typing import Any, Final

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


@dataclass(frozen=True)
class Held:
    """A `presence` row as a sample found it."""

    device_id: str
    node: str
    current: bool  # its epoch is the one of the node's lease row
    live: bool  # that lease had not lapsed (by the database's clock)

    @property
    def held(self) -> bool:
        return self.current and self.live


@dataclass(frozen=True)
class Sample:
    """The `presence` table between `started_s` and `ended_s` (the soak's
    clock: the query's start and its answer)."""

    started_s: float
    ended_s: float
    rows: tuple[Held, ...]

    def row(self, device_id: str) -> Held | None:
        return next((r for r in self.rows if r.device_id == device_id), None)


@dataclass(frozen=True)
class JobSeen:
    """A job reached a phone (a `send` frame; an item of the app's listing)
    through `node`, at `at_s` (the soak's clock)."""

    at_s: float
    device_id: str
    node: str
    message_id: str


@dataclass(frozen=True)
class NoDevice:
    """A send answered 400 "No eligible device available", by `node`, at
    `at_s`, for the account whose phones are of `kind`."""

    at_s: float
    node: str
    kind: str


# A phone's connections: (when, the node it is connected to, None for none),
# one entry a change. A node's life: (when, running), one entry a change.
Timeline = list[tuple[float, str | None]]
Life = list[tuple[float, bool]]


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
    # Presence (CONTRACT section 13): the samples, the last one taken once
    # all was final; each phone's connections and each node's life; the
    # PostgreSQL outages (from, to), when no row can be written.
    presence: list[Sample] = field(default_factory=list)
    presence_end: Sample | None = None
    timelines: dict[str, Timeline] = field(default_factory=dict)  # device id -> its connections
    lives: dict[str, Life] = field(default_factory=dict)  # node -> its process's life
    outages: list[tuple[float, float]] = field(default_factory=list)
    # When the soak's own event loop ran late (from, to): the phones' records
    # of their connections were late as much, their frames waiting in it.
    stalls: list[tuple[float, float]] = field(default_factory=list)
    jobs_seen: list[JobSeen] = field(default_factory=list)
    no_device: list[NoDevice] = field(default_factory=list)
    # How long a killed node's rows may stay (its lease lapsing, then a
    # reaper's turn), and how long a phone's row may lag its connection.
    lapse_s: float = 0.0
    reconnect_s: float = 0.0


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


def _at(changes: list[tuple[float, Any]], t: float, before: Any) -> Any:
    """The value of a timeline (or a life) at `t`."""
    value = before
    for at, v in changes:
        if at > t:
            break
        value = v
    return value


def _changed(changes: list[tuple[float, Any]], lo: float, hi: float) -> bool:
    return any(lo < at <= hi for at, _ in changes)


def _died(life: Life, lo: float, hi: float) -> bool:
    return any(lo < at <= hi and not running for at, running in life)


def _outage(e: Evidence, lo: float, hi: float, after_s: float) -> bool:
    """PostgreSQL was down within [lo, hi], or came back less than `after_s`
    before `lo` (writes owed meanwhile are written at the next turn)."""
    return any(down <= hi and up + after_s >= lo for down, up in e.outages)


def _running(e: Evidence, node: str, lo: float, hi: float) -> bool:
    life = e.lives.get(node, [])
    return _at(life, lo, False) and not _died(life, lo, hi)


def _excused_row(e: Evidence, row: Held, lo: float, hi: float) -> bool:
    """A row a killed node left (its lease lapsing, then a reaper's turn;
    a start of the node again changes nothing to that), or one PostgreSQL's
    outage kept from being renewed."""
    return (_died(e.lives.get(row.node, []), lo - e.lapse_s, hi)
            or _outage(e, lo - e.lapse_s, hi, e.lapse_s))


def _row_problem(e: Evidence, row: Held, lo: float, hi: float) -> str | None:
    if not row.current:
        why = "an epoch its node no longer holds"
    elif not row.live:
        why = "a lapsed lease"
    elif not _running(e, row.node, lo, hi):
        why = "a node whose process was not running"
    else:
        return None
    return f"{row.device_id} held by {row.node} under {why}"


def rows_live(e: Evidence) -> Verdict:
    problems = []
    for sample in e.presence:
        for row in sample.rows:
            why = _row_problem(e, row, sample.started_s, sample.ended_s)
            if why and not _excused_row(e, row, sample.started_s, sample.ended_s):
                problems.append(f"at {sample.started_s:.1f} s: {why}")
    end = e.presence_end
    if end is None:
        problems.append("no presence sample at the end")
    else:
        problems += [f"at the end: {why}" for row in end.rows
                     if (why := _row_problem(e, row, end.started_s, end.ended_s))]
    rows = sum(len(s.rows) for s in e.presence)
    return problems, (f"{len(e.presence)} samples ({rows} rows) and the end's"
                      f" {len(end.rows) if end else 0}: each held by a running node")


def _holder(row: Held | None) -> str | None:
    return row.node if row is not None and row.held else None


def _settled(e: Evidence, timeline: Timeline, lo: float, hi: float) -> bool:
    """No change to the phone's connection, PostgreSQL up and the soak's
    loop on time, from a reconnect's window before `lo` to `hi`."""
    return (not _changed(timeline, lo - e.reconnect_s, hi)
            and not _outage(e, lo - e.reconnect_s, hi, e.reconnect_s)
            and not any(start <= hi and end >= lo - e.reconnect_s for start, end in e.stalls))


def _mismatch(e: Evidence, sample: Sample, device: str, connected: str | None) -> str | None:
    """Why the sample's row for the device disagrees with where it was connected."""
    row = sample.row(device)
    holder = _holder(row)
    if connected is not None and holder != connected:
        return (f"{device} connected to {connected}, its row names"
                f" {row.node + ('' if row.held else ' (not held)') if row else 'no node'}")
    if (connected is None and row is not None and holder is not None
            and not _excused_row(e, row, sample.started_s, sample.ended_s)):
        return f"{device} connected nowhere, held by {holder}"
    return None


def rows_where_connected(e: Evidence) -> Verdict:
    problems: list[str] = []
    checked = 0
    for sample in e.presence:
        for device, timeline in sorted(e.timelines.items()):
            if not _settled(e, timeline, sample.started_s, sample.ended_s):
                continue
            checked += 1
            why = _mismatch(e, sample, device, _at(timeline, sample.started_s, None))
            if why:
                problems.append(f"at {sample.started_s:.1f} s: {why}")
    end = e.presence_end
    if end is not None:
        for device, timeline in sorted(e.timelines.items()):
            why = _mismatch(e, end, device, _at(timeline, end.started_s, None))
            if why:
                problems.append(f"at the end: {why}")
        known = set(e.timelines)
        problems += [f"at the end: a row for {r.device_id}, no phone of the soak"
                     for r in end.rows if r.device_id not in known]
    return problems, (f"{checked} settled phone samples and the end: each phone's row"
                      " names the node it is connected to")


def jobs_through_holder(e: Evidence) -> Verdict:
    problems: list[str] = []
    checked = 0
    samples = sorted(e.presence, key=lambda s: s.started_s)
    for job in e.jobs_seen:
        timeline = e.timelines.get(job.device_id, [])
        before = next((s for s in reversed(samples) if s.ended_s <= job.at_s), None)
        after = next((s for s in samples if s.started_s >= job.at_s), None)
        if (before is None or after is None
                or _at(timeline, job.at_s, None) != job.node
                or not _settled(e, timeline, before.started_s, after.ended_s)):
            continue  # around a reconnect, an outage, or the run's edges
        checked += 1
        holders = {_holder(before.row(job.device_id)), _holder(after.row(job.device_id))}
        if holders != {job.node}:
            problems.append(f"{job.message_id} reached {job.device_id} through {job.node} at"
                            f" {job.at_s:.1f} s; its row named {sorted(map(str, holders))}")
    nodes = Counter(j.node for j in e.jobs_seen)
    return problems, (f"{len(e.jobs_seen)} jobs reached phones ({_plain(nodes)}); the"
                      f" {checked} between settled samples each through its holder")


def sends_reach_any_node(e: Evidence) -> Verdict:
    problems = []
    for answer in e.no_device:
        online = sorted(
            f"{device} on {node}" for device, timeline in e.timelines.items()
            if e.kinds.get(device) == answer.kind
            and (node := _at(timeline, answer.at_s, None)) is not None
            and _running(e, node, answer.at_s, answer.at_s)
            and _settled(e, timeline, answer.at_s, answer.at_s))
        if online:
            problems.append(f"{answer.node} at {answer.at_s:.1f} s: no eligible device for the"
                            f" {answer.kind} account, while {', '.join(online)}")
    return problems, (f"{len(e.no_device)} sends answered no eligible device, each while no"
                      " phone of its account was settled on a running node")


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
    "presence: every row held by a live node": rows_live,
    "presence: each phone's row where it is": rows_where_connected,
    "presence: jobs only through the holder": jobs_through_holder,
    "nodes: a send reaches a phone on any node": sends_reach_any_node,
}


def check_all(e: Evidence) -> list[Check]:
    return [_check(name, *verdict(e)) for name, verdict in CHECKS.items()]


def final_counts(rows: Mapping[str, Row]) -> Counter[str]:
    return Counter(r.status for r in rows.values())
