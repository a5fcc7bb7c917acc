"""Issue 4's proof, short form: nothing lost, nothing doubled, under faults.

The soak (tests/fault/soak.py) sends 100 messages, each with its own
Idempotency-Key, to 5 `device-sim` phones (3 on our WebSocket protocol, 2
SMS Gateway apps on the mobile API; an account each kind, half the messages
each) that report random outcomes and drop their connections at random,
while the broker (a real subprocess) is killed with SIGKILL once and
PostgreSQL is stopped and started once. Each account has a webhook endpoint
for every event at a real receiver that verifies each request with the
`standardwebhooks` library, answers 500 now and then and is off the network
for a second during the sends. Each test below asserts one promise over
that one run (fixture `short_soak`).
The full form, 1,000 messages to 20 phones (10 of each kind) with 3
SIGKILLs, is `make soak`.

"Final", for the soak, is `delivered` or `failed`, or `sent` when `sent` was
the phone's last report: a simulated carrier that answers `sent` never
sends a delivery report, so that message stays `sent` for good (contract
section 5 keeps a `sent` message open for a delivery report that, here, will
not come). A `sent` message whose phone reported `delivered` is not final:
its delivery report is still on its way.

The same promises hold with three nodes (CONTRACT section 13, fixture
`three_nodes`): three `python -m broker serve` processes on the one
PostgreSQL, talking over LISTEN/NOTIFY, the phones spread over them and
each send at the next node in turn (one node holds no SMS Gateway phone, so
its sends for that account reach one over the bus); one node is SIGKILLed,
down 3 s, its phones reconnect to the others (one of them offline 7 s
first). And no phone is held by two nodes: every presence row held by a
live node, each phone's row naming the node it is connected to, every job
through that node. The NATS bus runs in `make soak`.

Below the soaks, the checker itself on hand-made evidence: a check that
cannot fail proves nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from tests.fault import invariants
from tests.fault.invariants import (
    Arrival,
    Evidence,
    Held,
    JobSeen,
    NoDevice,
    Row,
    Sample,
    Step,
    history_problem,
    is_final,
)
from tests.fault.phones import OUTCOME_WEIGHTS, outcome_for
from tests.fault.soak import SoakReport

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", list(invariants.CHECKS))
def test_the_short_soak_keeps_its_promise(short_soak: SoakReport, name: str) -> None:
    check = next(c for c in short_soak.checks if c.name == name)
    assert check.ok, (f"{check.name}: {check.detail}\n{short_soak.table()}\n\n"
                      f"{short_soak.log_tail()}")


def test_the_short_soak_ran_its_faults(short_soak: SoakReport) -> None:
    kinds = Counter(f.kind for f in short_soak.faults)
    assert kinds == {"kill": 1, "pg restart": 1}
    assert short_soak.figures["answered 201"] == 100
    assert short_soak.figures["phones"] == "2 smsgate, 3 websocket"
    assert short_soak.figures["receiver down"] != "never"
    assert "500" in short_soak.figures["receiver requests"], short_soak.table()
    assert short_soak.duration_s < 60, short_soak.table()


@pytest.mark.parametrize("name", list(invariants.CHECKS))
def test_three_nodes_keep_the_promise(three_nodes: SoakReport, name: str) -> None:
    check = next(c for c in three_nodes.checks if c.name == name)
    assert check.ok, (f"{check.name}: {check.detail}\n{three_nodes.table()}\n\n"
                      f"{three_nodes.log_tail()}")


def test_three_nodes_ran_their_faults(three_nodes: SoakReport) -> None:
    f = three_nodes.figures
    assert [x.kind for x in three_nodes.faults] == ["node kill"], three_nodes.table()
    assert f["nodes"].startswith("3 (postgres bus"), three_nodes.table()
    assert f["answered 201"] == 100
    # The killed node's phones went on elsewhere (one after its network came back).
    assert f["phone moves to another node"] >= 1, three_nodes.table()
    # Sends were taken by nodes holding none of the account's phones: they
    # reached a phone on another node through the bus, and every check held.
    assert int(f["sends taken where no phone was"].split()[0]) > 0, three_nodes.table()
    assert len(three_nodes.evidence.presence) > 10, three_nodes.table()
    assert len({j.node for j in three_nodes.evidence.jobs_seen}) == 3, three_nodes.table()


# --- the checker, on hand-made evidence ---------------------------------------

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def steps(*statuses: str, same_first_two: bool = True) -> list[Step]:
    """A history, one second apart (the first two share created_at, as
    insert_message writes them)."""
    out = []
    for i, status in enumerate(statuses):
        second = max(0, i - 1) if same_first_two else i
        out.append(Step(status, T0 + dt.timedelta(seconds=second)))
    return out


@pytest.mark.parametrize("status,history", [
    ("delivered", ["queued", "dispatching", "sending", "sent", "delivered"]),
    ("delivered", ["queued", "dispatching", "sending", "delivered"]),
    ("delivered", ["queued", "dispatching", "sending", "delivered", "sent"]),  # late sent
    ("failed", ["queued", "dispatching", "sending", "failed", "sent"]),
    ("failed", ["queued", "dispatching", "failed"]),
    ("failed", ["queued", "failed"]),  # expired before any phone took it
    ("sent", ["queued", "dispatching", "sending", "sent"]),
    ("dispatching", ["queued", "dispatching"]),
])
def test_forward_histories_pass(status: str, history: list[str]) -> None:
    assert history_problem(status, steps(*history)) is None


@pytest.mark.parametrize("status,history,why", [
    ("delivered", ["dispatching", "sending", "delivered"], "not queued"),
    ("delivered", [], "nothing"),
    ("delivered", ["queued", "dispatching", "delivered"], "not a forward move"),
    ("failed", ["queued", "dispatching", "sending", "delivered", "failed"], "after final"),
    ("delivered", ["queued", "dispatching", "sending", "failed", "delivered"], "after final"),
    ("sending", ["queued", "dispatching", "sending", "sent"], "but the message is sending"),
])
def test_broken_histories_are_caught(status: str, history: list[str], why: str) -> None:
    problem = history_problem(status, steps(*history))
    assert problem is not None and why in problem


def test_a_history_is_ordered_by_time_then_rank() -> None:
    backwards = [Step("queued", T0), Step("dispatching", T0),
                 Step("sending", T0 + dt.timedelta(seconds=2)),
                 Step("dispatching", T0 + dt.timedelta(seconds=3))]
    assert "not a forward move" in (history_problem("sending", backwards) or "")
    tied = [Step("dispatching", T0), Step("queued", T0)]  # same created_at: rank decides
    assert history_problem("dispatching", tied) is None


def test_final_means_what_the_phone_last_said() -> None:
    assert is_final("delivered", None) and is_final("failed", None)
    assert is_final("sent", "sent")
    assert not is_final("sent", "delivered")  # its delivery report is still coming
    assert not is_final("sending", "failed")


def event(mid: str, status: str, answered: int = 204, webhook_id: str | None = None,
          verified: bool = True) -> Arrival:
    return Arrival(webhook_id or f"msg_{mid}_{status}", f"message.{status}", mid, status,
                   verified, answered)


def evidence() -> Evidence:
    """Two messages, each sent once by its owner, as a passing soak sees
    them; each history row's event at the receiver, the first answered 500
    and sent again, and the outbox drained."""
    e = Evidence(requested=2, kinds={"d1": "websocket", "d2": "smsgate"})
    for i, (status, device) in enumerate([("delivered", "d1"), ("failed", "d2")]):
        mid = f"m{i}"
        e.accepted[f"k{i}"] = mid
        e.key_rows[f"k{i}"] = mid
        e.rows[mid] = Row(mid, status, device, f"body {i}")
        e.history[mid] = steps("queued", "dispatching", "sending", status)
        e.sends.setdefault(device, Counter())[mid] = 1
        e.outcomes[mid] = status
        e.answers["201"] += 1
        e.arrivals += [event(mid, s.status) for s in e.history[mid]]
    e.arrivals.insert(0, event("m0", "queued", answered=500))
    e.arrivals.append(Arrival("dev_1", "device.online", None, None, True, 204))
    e.outbox = Counter(delivered=9)
    # Two nodes; d1 on n1 and d2 on n2 from 1 s, sampled every second, each
    # job through its phone's node.
    e.lives = {"n1": [(0.0, True)], "n2": [(0.0, True)]}
    e.timelines = {"d1": [(1.0, "n1")], "d2": [(1.0, "n2")]}
    e.presence = [Sample(t, t + 0.1, (Held("d1", "n1", True, True), Held("d2", "n2", True, True)))
                  for t in (1.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)]
    e.presence_end = Sample(20.0, 20.1, e.presence[-1].rows)
    e.jobs_seen = [JobSeen(4.5, "d1", "n1", "m0"), JobSeen(5.5, "d2", "n2", "m1")]
    e.lapse_s, e.reconnect_s = 3.0, 1.0
    return e


def failing(e: Evidence) -> set[str]:
    return {c.name for c in invariants.check_all(e) if not c.ok}


def test_good_evidence_passes_every_check() -> None:
    assert failing(evidence()) == set()


def test_a_lost_message_is_caught() -> None:
    e = evidence()
    del e.rows["m0"]
    assert "nothing lost" in failing(e)


def test_a_doubled_message_is_caught() -> None:
    e = evidence()
    e.rows["m9"] = Row("m9", "delivered", "d1", "body 0")  # a second message, same request
    e.history["m9"] = steps("queued", "dispatching", "sending", "delivered")
    e.sends["d1"]["m9"] = 1
    e.outcomes["m9"] = "delivered"
    assert "nothing doubled" in failing(e)


def test_an_sms_sent_twice_is_caught() -> None:
    e = evidence()
    e.sends.setdefault("d2", Counter())["m0"] = 1  # a second phone sent it too
    assert {"each SMS sent exactly once", "sent by its owner, stored as reported"} <= failing(e)


def test_a_delivered_message_no_phone_sent_is_caught() -> None:
    e = evidence()
    e.sends["d1"]["m0"] = 0
    assert "each SMS sent exactly once" in failing(e)


def test_a_report_never_stored_is_caught() -> None:
    e = evidence()
    e.rows["m1"] = Row("m1", "sending", "d2", "body 1")  # the phone said failed
    e.history["m1"] = steps("queued", "dispatching", "sending")
    e.arrivals = [a for a in e.arrivals if a.status != "failed"]  # no history row, no event
    assert failing(e) == {"every message final"}


def test_a_kind_of_phone_that_sent_nothing_is_caught() -> None:
    e = evidence()
    e.kinds["d3"] = "smsgate"  # a third phone, idle: its kind sent through d2
    assert failing(e) == set()
    e.sends["d2"]["m1"] = 0  # no SMS from any smsgate phone
    e.rows["m1"] = Row("m1", "failed", "d2", "body 1")  # failed before sending (expired)
    assert "every kind of phone sent SMS" in failing(e)


def test_a_500_and_an_unexplained_answer_are_caught() -> None:
    e = evidence()
    e.answers["500"] += 1
    e.unexpected.append("k1: 409 conflict")
    assert {"no 500 answers", "every send answered 201"} <= failing(e)


def test_a_phone_outcome_is_fixed_per_message_and_mixed() -> None:
    assert outcome_for(4, "abc") == outcome_for(4, "abc")
    drawn = Counter(outcome_for(4, f"id-{i}") for i in range(1000))
    assert set(drawn) == set(OUTCOME_WEIGHTS)
    assert 500 < drawn["delivered"] < 700


# --- the webhook checks, on hand-made evidence --------------------------------


def test_a_lost_event_is_caught() -> None:
    e = evidence()
    e.arrivals = [a for a in e.arrivals if (a.message_id, a.status) != ("m1", "sending")]
    assert failing(e) == {"webhooks: no event lost"}


def test_an_event_answered_500_only_is_lost() -> None:
    e = evidence()
    e.arrivals = [a for a in e.arrivals if (a.message_id, a.status) != ("m0", "queued")]
    e.arrivals.append(event("m0", "queued", answered=500))
    assert "webhooks: no event lost" in failing(e)


def test_a_late_sent_after_delivered_fires_nothing() -> None:
    e = evidence()
    e.history["m0"].append(Step("sent", e.history["m0"][-1].at + dt.timedelta(seconds=1)))
    assert failing(e) == set()  # no event owed for it
    e.arrivals.append(event("m0", "sent"))
    assert "webhooks: no event lost" in failing(e)  # one arrived all the same
    e = evidence()  # a late sent after failed fires one, as any history row
    e.history["m1"].append(Step("sent", e.history["m1"][-1].at + dt.timedelta(seconds=1)))
    assert failing(e) == {"webhooks: no event lost"}
    e.arrivals.append(event("m1", "sent"))
    assert failing(e) == set()


def test_a_sent_written_with_delivered_fires_too() -> None:
    e = evidence()
    delivered = next(s for s in e.history["m0"] if s.status == "delivered")
    e.history["m0"].append(Step("sent", delivered.at))  # one transaction wrote both
    assert failing(e) == {"webhooks: no event lost"}  # its event is owed
    e.arrivals.append(event("m0", "sent"))
    assert "webhooks: no event lost" not in failing(e)


def test_an_event_resent_under_a_new_id_is_caught() -> None:
    e = evidence()
    e.arrivals.append(event("m0", "sending", webhook_id="msg_other"))
    assert {"webhooks: one webhook-id per event", "webhooks: no event lost"} == failing(e)
    e = evidence()  # answered 500 under the first id, delivered under another: still two ids
    e.arrivals.insert(0, event("m1", "failed", answered=500, webhook_id="msg_first"))
    assert failing(e) == {"webhooks: one webhook-id per event"}


def test_a_webhook_id_reused_for_another_event_is_caught() -> None:
    e = evidence()
    e.arrivals.append(event("m1", "queued", answered=500, webhook_id="msg_m0_queued"))
    assert failing(e) == {"webhooks: one webhook-id per event"}


def test_a_duplicate_under_the_same_id_is_dropped() -> None:
    e = evidence()
    e.arrivals.append(event("m0", "dispatching"))  # at least once: the receiver dedups it
    assert failing(e) == set()


def test_an_unverified_request_is_caught() -> None:
    e = evidence()
    e.arrivals.append(event("m0", "delivered", answered=500, verified=False))
    assert failing(e) == {"webhooks: every request verified"}
    e.arrivals = []
    assert "webhooks: every request verified" in failing(e)


def test_events_out_of_order_are_caught() -> None:
    e = evidence()
    i = e.arrivals.index(event("m1", "dispatching"))
    j = e.arrivals.index(event("m1", "sending"))
    e.arrivals[i], e.arrivals[j] = e.arrivals[j], e.arrivals[i]
    assert failing(e) == {"webhooks: each message's order kept"}


def test_a_late_duplicate_of_an_earlier_event_keeps_the_order() -> None:
    e = evidence()
    e.arrivals.append(event("m1", "queued"))  # after failed: only the first arrival counts
    assert failing(e) == set()


def test_an_outbox_left_owing_is_caught() -> None:
    for state in ("pending", "failed"):
        e = evidence()
        e.outbox[state] = 1
        assert failing(e) == {"webhooks: outbox drained"}
    e.outbox = Counter()
    assert failing(e) == {"webhooks: outbox drained"}


# --- no phone held by two nodes, on hand-made evidence -------------------------


def rows(*held: Held) -> tuple[Held, ...]:
    return held


def sampled(e: Evidence, at: float, *held: Held) -> None:
    """Sample `at` (one of evidence()'s) holds `held` instead."""
    i = next(i for i, s in enumerate(e.presence) if s.started_s == at)
    e.presence[i] = Sample(at, at + 0.1, held)


def test_a_killed_nodes_row_may_stay_only_while_its_lease_lapses() -> None:
    e = evidence()
    e.lives["n2"].append((4.5, False))  # killed at 4.5 s; d2 offline from then
    e.timelines["d2"].append((4.5, None))
    lapsing = Held("d2", "n2", True, True)  # the dead process's lease still runs
    sampled(e, 5.0, Held("d1", "n1", True, True), lapsing)
    sampled(e, 6.0, Held("d1", "n1", True, True), Held("d2", "n2", True, False))
    sampled(e, 7.0, Held("d1", "n1", True, True))
    sampled(e, 8.0, Held("d1", "n1", True, True))
    e.presence_end = Sample(20.0, 20.1, rows(Held("d1", "n1", True, True)))
    e.jobs_seen.pop()  # no job reached d2 after 4.5 s
    assert failing(e) == set()
    sampled(e, 8.0, Held("d1", "n1", True, True), Held("d2", "n2", False, False))  # 3.5 s on
    assert failing(e) == {"presence: every row held by a live node"}
    e = evidence()
    e.presence_end = Sample(20.0, 20.1, rows(Held("d1", "n1", True, True),
                                             Held("d2", "n2", True, False)))  # lapsed at the end
    assert failing(e) == {"presence: every row held by a live node",
                          "presence: each phone's row where it is"}  # d2 is on n2: no holder


def test_a_row_of_a_node_not_running_is_caught_even_with_a_live_lease() -> None:
    e = evidence()
    e.lives["n3"] = [(0.0, True), (1.0, False)]
    e.presence_end = Sample(20.0, 20.1, (*e.presence[-1].rows, Held("d3", "n3", True, True)))
    assert "presence: every row held by a live node" in failing(e)


def test_a_phone_whose_row_names_another_node_is_caught() -> None:
    e = evidence()
    e.timelines["d2"] += [(4.2, None), (4.8, "n1")]  # moved to n1 at 4.8 s
    e.jobs_seen.pop()
    # Its row still names n2 at 5 s (within a reconnect): that may be.
    sampled(e, 5.0, Held("d1", "n1", True, True), Held("d2", "n2", True, True))
    for t in (6.0, 7.0, 8.0):
        sampled(e, t, Held("d1", "n1", True, True), Held("d2", "n1", True, True))
    e.presence_end = Sample(20.0, 20.1, e.presence[-1].rows)
    assert failing(e) == set()
    sampled(e, 6.0, Held("d1", "n1", True, True), Held("d2", "n2", True, True))  # 1.2 s on
    assert failing(e) == {"presence: each phone's row where it is"}
    e.presence_end = Sample(20.0, 20.1, rows(Held("d1", "n1", True, True)))  # no row at the end
    assert "at the end: d2 connected to n1, its row names no node" in str(
        {c.detail for c in invariants.check_all(e)})


def test_a_phone_held_while_connected_nowhere_is_caught() -> None:
    e = evidence()
    e.timelines["d2"].append((4.2, None))  # its network went; n2 lives on
    e.jobs_seen.pop()
    sampled(e, 5.0, Held("d1", "n1", True, True), Held("d2", "n2", True, True))  # 0.8 s on
    for t in (6.0, 7.0, 8.0):
        sampled(e, t, Held("d1", "n1", True, True))
    e.presence_end = Sample(20.0, 20.1, e.presence[-1].rows)
    assert failing(e) == set()
    sampled(e, 7.0, Held("d1", "n1", True, True), Held("d2", "n2", True, True))
    assert failing(e) == {"presence: each phone's row where it is"}


def test_an_outage_excuses_rows_not_written_meanwhile() -> None:
    e = evidence()
    e.timelines["d2"] += [(4.2, None), (4.3, "n1")]  # moved while PostgreSQL was down
    e.outages = [(4.0, 5.5)]
    e.jobs_seen.pop()
    sampled(e, 6.0, Held("d1", "n1", True, True), Held("d2", "n2", True, True))
    for t in (7.0, 8.0):
        sampled(e, t, Held("d1", "n1", True, True), Held("d2", "n1", True, True))
    e.presence_end = Sample(20.0, 20.1, e.presence[-1].rows)
    assert failing(e) == set()
    e.outages = []
    assert failing(e) == {"presence: each phone's row where it is"}
    e.stalls = [(5.6, 6.0)]  # the soak's loop was late: d2's record of its move may be too
    assert failing(e) == set()


def test_a_job_through_a_node_that_does_not_hold_the_phone_is_caught() -> None:
    e = evidence()
    e.jobs_seen.append(JobSeen(6.5, "d1", "n2", "m0"))  # d1 is on n1: not from its socket
    assert failing(e) == set()  # a job through a node it is not connected to is not counted
    e = evidence()
    # d1's row names n2 around a job through n1 (and the row check sees it too).
    sampled(e, 4.0, Held("d1", "n2", True, True), Held("d2", "n2", True, True))
    assert failing(e) == {"presence: jobs only through the holder",
                          "presence: each phone's row where it is"}
    e = evidence()
    sampled(e, 5.0, Held("d2", "n2", True, True))  # no row at all after the job
    assert "presence: jobs only through the holder" in failing(e)


def test_a_job_around_a_reconnect_is_not_judged() -> None:
    e = evidence()
    e.timelines["d1"] += [(4.1, None), (4.2, "n1")]
    sampled(e, 4.0, Held("d2", "n2", True, True))  # the row went and came back
    assert failing(e) == set()


def test_no_eligible_device_while_a_phone_was_on_a_node_is_caught() -> None:
    e = evidence()
    e.kinds = {"d1": "websocket", "d2": "websocket"}
    e.timelines["d2"] += [(4.0, None), (4.9, "n1")]
    e.no_device = [NoDevice(0.5, "n2", "websocket"),  # no phone connected yet
                   NoDevice(4.4, "n2", "smsgate"),  # that account has no phone here
                   NoDevice(5.5, "n2", "websocket")]  # d1 on n1 (and d2 just back)
    assert "nodes: a send reaches a phone on any node" in failing(e)
    e.no_device.pop()
    e.lives["n1"].append((4.5, False))  # n1 is killed: d1's socket is gone with it
    e.no_device.append(NoDevice(5.0, "n2", "websocket"))
    assert "nodes: a send reaches a phone on any node" not in failing(e)
