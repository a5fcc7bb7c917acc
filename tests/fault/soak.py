"""The soak of issue 4: nothing lost, nothing doubled, under faults.

    python -m tests.fault.soak --messages 1000 --phones 20 --kills 3 --pg-restarts 1

All real processes: an embedded PostgreSQL of its own in a temp dir (so it
never touches another test's server), the broker as a subprocess
(`python -m broker serve`), and P simulated phones in this event loop, of
both kinds: `--smsgate S` of them (default half) the SMS Gateway for
Android app on the mobile API (`AppSim`, HTTP + SSE), the others our
WebSocket protocol (`DeviceSim`), each kind an account of its own
(services.prepare says why). It sends N messages over HTTP, each with its
own Idempotency-Key, by turns through each account, while the phones report
random outcomes (delivered, sent, failed) and drop their connections (the
socket, the event stream) at random; meanwhile the broker is killed with
SIGKILL K times (restarted at once on the same port) and PostgreSQL is
stopped and started R times. Each account has a webhook endpoint for every
event ("*") at a receiver in this process (tests/e2e/webhook_receiver.py: a
real uvicorn that verifies each request with the `standardwebhooks`
library), which answers 500 now and then and is taken off the network for
a while during the sends, so the sender retries, and events sit in the
outbox across each SIGKILL. Then it waits until every message is final and
the outbox has nothing pending (both bounded), checks the promises of
contract sections 5 and 9 (tests/fault/invariants.py), prints a table, and
exits 1 if any failed.

With `--nodes N` (CONTRACT section 13) N brokers run on the one
PostgreSQL, each its own `python -m broker serve` on its own port under its
own SMSDORA_NODE (soak-1 ... soak-N), talking over `--bus` (postgres:
LISTEN/NOTIFY; nats: a nats-server of the soak's own on a loopback port).
Phone i connects to node i mod N first (tests/fault/phones.py: a phone
moves on to the next node when its node is unreachable); message i goes to
node i mod N, and each retry to the next node, so that a send often lands
on a node that holds none of its account's phones and reaches them over the
bus. `--node-kills K`: K times a node is SIGKILLed and stays down
`--node-down` seconds before it starts again (under its name: it waits out
its lease as a successor does); its phones reconnect to the live nodes, but
one of them, its network down too, only after `offline_s`, past the
killed node's lease: that phone's row must go meanwhile. A `--kills`
SIGKILL restarts its node at once, as with one node. Through the run the
`presence` table is sampled, and once more at the end, for the checks that
no phone is held by two nodes.

A send is retried, with the same Idempotency-Key and the same body, after a
connection error or timeout, a 503, a 500 (counted, and a failed check), or
a 400 "No eligible device available" (the phones are still reconnecting
after a kill; nothing was written). The key is what makes a retry safe: it
can only replay the first message, never make a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from broker import store
from broker.device_sim import DeviceRejected
from tests.e2e.webhook_receiver import Got, Receiver, Reply
from tests.fault.invariants import (
    Arrival,
    Check,
    Evidence,
    NoDevice,
    Row,
    Sample,
    Step,
    check_all,
    delivered_events,
    final_counts,
    is_final,
    rows_live,
    rows_where_connected,
)
from tests.fault.phones import Route, SoakAppPhone, SoakAppSim, SoakPhone, SoakSim, go_offline
from tests.fault.services import (
    BrokerProcess,
    Cluster,
    Postgres,
    errors,
    prepare,
    sample_presence,
    tail,
    wait_healthy,
)

NO_DEVICE = "No eligible device available"
RETRIED = frozenset({"timeout", "503", "500", "400 no eligible device"})
STALL_S = 0.2  # the soak's own event loop this late: a stall (its phones' records lag)
SLOW_S = 5.0  # issue 4: sends during an outage "answer 503 in the error shape within 5 s"


@dataclass(frozen=True)
class SoakConfig:
    messages: int = 100
    phones: int = 5
    smsgate: int | None = None  # of the phones, SMS Gateway apps; default half
    kills: int = 1
    pg_restarts: int = 1
    seed: int = 4
    rate: float = 50.0  # messages started per second
    concurrency: int = 16  # requests in flight at most
    pg_down_s: float = 1.0  # how long PostgreSQL stays stopped per restart
    settle_s: float = 60.0  # how long to wait for every message to be final
    give_up_s: float = 120.0  # per message: retry for at most this long
    recover_s: float = 30.0  # /health ok within this after a fault, or a failed check
    drop_every_s: tuple[float, float] = (0.1, 0.6)  # one random disconnect per interval
    receiver_down_s: float = 1.0  # the webhook receiver off the network once, this long
    receiver_500: float = 0.05  # of the receiver's answers, 500 at random
    # How long to wait, after settle, for the outbox to have nothing pending
    # (the rows a SIGKILL left leased are released when the broker starts
    # again, migration 0007; then their retries).
    drain_s: float = 60.0
    overall_s: float = 600.0  # the whole run, clean-up aside, or SoakAborted
    workdir: Path | None = None  # default: a fresh temp dir, removed after a pass
    keep: bool = False  # keep the work dir (data dir, broker.log) even after a pass
    # Several nodes (CONTRACT section 13).
    nodes: int = 1
    bus: str = "postgres"  # or "nats"
    node_kills: int = 0  # SIGKILLs of a node that stays down `node_down_s`
    node_down_s: float = 3.0
    offline_s: float = 7.0  # one phone of a node killed so: its network down this long
    lease_s: float = 2.0  # SMSDORA_LEASE_SECONDS
    sample_s: float = 0.25  # the presence table sampled this often
    reconnect_s: float = 2.0  # how long a phone's row may lag its connection


@dataclass
class Fault:
    kind: str  # "kill", "node kill" or "pg restart"
    at_s: float  # since the soak started
    accepted_before: int
    recovered_s: float | None = None  # until /health said ok again
    note: str = ""


@dataclass
class SoakReport:
    config: SoakConfig
    evidence: Evidence
    checks: list[Check]
    faults: list[Fault]
    figures: dict[str, Any]
    workdir: Path
    duration_s: float
    logs: list[Path]  # each node's

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def broker_log(self) -> Path:
        return self.logs[0]

    def log_tail(self, lines: int = 20) -> str:
        """For a failure: each node's error lines, then the last lines of its log."""
        return _log_tails(self.logs, lines)

    def table(self) -> str:
        rule = "-" * 78
        out = ["", "smsdora soak", rule]
        out += [f"{name:<30} {value}" for name, value in self.figures.items()]
        for f in self.faults:
            back = f"ok after {f.recovered_s:.2f} s" if f.recovered_s is not None else "NOT OK"
            out.append(f"  {f.kind:<10} at {f.at_s:6.2f} s, {f.accepted_before:>5} accepted:"
                       f" /health {back}{'; ' + f.note if f.note else ''}")
        out.append(rule)
        out += [f"{'PASS' if c.ok else 'FAIL'}  {c.name:<38} {c.detail}" for c in self.checks]
        out.append(rule)
        out.append(f"{'PASSED' if self.ok else 'FAILED'} in {self.duration_s:.1f} s"
                   + (f"  (work dir kept: {self.workdir})" if self.workdir.exists() else ""))
        return "\n".join(out)


class SoakAborted(RuntimeError):
    """The soak could not run to its checks; the message says why, with the
    tail of the broker's log."""


class Soak:
    def __init__(self, cfg: SoakConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.rng = random.Random(cfg.seed)
        self.t0 = time.monotonic()
        self.evidence = Evidence(requested=cfg.messages)
        self.faults: list[Fault] = []
        self.outcomes: dict[str, str] = {}  # id -> what its phone reported (shared)
        self.sims: list[SoakSim | SoakAppSim] = []
        self.retries: Counter[str] = Counter()
        self.slow = 0  # answers (or timeouts) after more than SLOW_S
        self.sends_done = asyncio.Event()
        self.accepted_changed = asyncio.Event()
        self.pg = Postgres(workdir / "pg")
        self.cluster: Cluster | None = None
        self.dsn = ""
        self.samples: list[Sample] = []
        self.outages: list[tuple[float, float]] = []
        self.stalls: list[tuple[float, float]] = []  # this process's event loop late (from, to)
        self.worst_stall = 0.0
        self.key_kinds: dict[str, str] = {}  # API key -> the kind of its account's phones
        self.remote_sends = 0  # accepted by a node with no phone of the account on it
        # No random drops until then: after a node kill, until its phones
        # and rows have settled elsewhere, so that a row left wrong shows
        # (a phone's next connection would write it afresh).
        self.calm_until = 0.0
        self.receiver = Receiver()
        self.receiver.answer = self.answer
        # Drawn apart from self.rng, whose draws the concurrent tasks share.
        self.answers_rng = random.Random(f"{cfg.seed}/receiver")
        self.receiver_mark = self.answers_rng.uniform(0.2, 0.8) * cfg.messages
        self.receiver_down: list[str] = []
        self.attempts: Counter[str] = Counter()  # webhook_attempts, by outcome
        self.pending_left = 0  # outbox rows still pending when the drain gave up

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- sending --

    async def send_all(self, http: list[httpx.AsyncClient], api_keys: list[str]) -> None:
        """Message i through account i mod the accounts (one per phone kind),
        at node i mod the nodes."""
        gate = asyncio.Semaphore(self.cfg.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        for i in range(self.cfg.messages):
            delay = start + i / self.cfg.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            task = asyncio.get_running_loop().create_task(
                self.send_one(http, api_keys[i % len(api_keys)], i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: gate.release())
        while tasks:
            await asyncio.gather(*list(tasks))
        self.sends_done.set()
        self.accepted_changed.set()  # wakes a fault still waiting for its mark

    async def send_one(self, nodes: list[httpx.AsyncClient], api_key: str, i: int) -> None:
        """Retried at the next node each time (a load balancer's next pick)."""
        idem = f"soak-{self.cfg.seed}-{i}"
        body = {"recipient": f"+1650253{i % 10000:04d}", "message": f"soak {self.cfg.seed} #{i}"}
        headers = {"x-api-key": api_key, "Idempotency-Key": idem}
        deadline = time.monotonic() + self.cfg.give_up_s
        for attempt in range(1, 1_000_000):
            began = time.monotonic()
            http = nodes[(i + attempt - 1) % len(nodes)]
            try:
                r = await http.post("/messages/send", json=body, headers=headers)
            except httpx.TimeoutException:
                kind, text = "timeout", ""
            except httpx.TransportError as err:
                kind, text = f"connection error ({type(err).__name__})", ""
            else:
                kind, text = str(r.status_code), r.text
                if r.status_code == 400 and _message(r) == NO_DEVICE:
                    kind = "400 no eligible device"
                    self.evidence.no_device.append(
                        NoDevice(self.now(), self.node_of(http), self.key_kinds[api_key]))
            if time.monotonic() - began > SLOW_S:
                self.slow += 1
            self.evidence.answers[kind] += 1
            if kind == "201":
                self.evidence.accepted[idem] = r.json()["data"]["id"]
                self.accepted_changed.set()
                node, phones = self.node_of(http), self.key_kinds[api_key]
                if not any(s.kind == phones and s.route.where() == f"on {node}" for s in self.sims):
                    self.remote_sends += 1  # its phone is on another node (or none is on any)
                return
            if kind not in RETRIED and not kind.startswith("connection error"):
                self.evidence.unexpected.append(f"{idem}: {kind} {text[:200]}")
                return
            if time.monotonic() > deadline:
                self.evidence.unexpected.append(
                    f"{idem}: gave up after {attempt} attempts, the last {kind}")
                return
            self.retries[kind] += 1
            backoff = min(1.0, 0.05 * 2 ** min(attempt, 5))
            await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.5))

    def node_of(self, http: httpx.AsyncClient) -> str:
        assert self.cluster is not None
        return next(b.node for b in self.cluster.brokers if b.url == str(http.base_url).rstrip("/"))

    # -- faults --

    async def run_faults(self, health: list[httpx.AsyncClient]) -> None:
        """Each fault when a random share (10-90 %) of the messages is accepted."""
        kinds = (["kill"] * self.cfg.kills + ["pg restart"] * self.cfg.pg_restarts
                 + ["node kill"] * self.cfg.node_kills)
        self.rng.shuffle(kinds)
        marks = sorted(self.rng.uniform(0.1, 0.9) * self.cfg.messages for _ in kinds)
        for kind, mark in zip(kinds, marks, strict=True):
            while len(self.evidence.accepted) < mark and not self.sends_done.is_set():
                self.accepted_changed.clear()
                await self.accepted_changed.wait()
            fault = Fault(kind, self.now(), len(self.evidence.accepted))
            self.faults.append(fault)
            if kind == "kill":
                await self.kill_broker(fault, health)
            elif kind == "node kill":
                await self.kill_node(fault, health)
            else:
                await self.restart_pg(fault, health)

    def victim(self, most_phones: bool = False) -> BrokerProcess:
        """The node to kill: the only one, or one of the running at random
        (of those with the most phones on them)."""
        assert self.cluster is not None
        running = self.cluster.running()
        if len(self.cluster.brokers) == 1:
            return running[0]
        if most_phones:
            count = {b.node: len(self.phones_on(b)) for b in running}
            running = [b for b in running if count[b.node] == max(count.values())]
        return self.rng.choice(running)

    def phones_on(self, broker: BrokerProcess) -> list[SoakSim | SoakAppSim]:
        """Connected to it, or about to be again (dropped a moment ago)."""
        return [s for s in self.sims if s.route.node == broker.node]

    async def kill_broker(self, fault: Fault, health: list[httpx.AsyncClient]) -> None:
        """SIGKILL, started again at once (on its port, under its name)."""
        assert self.cluster is not None
        broker = self.victim()
        if len(self.cluster.brokers) > 1:
            fault.note = broker.node
        await asyncio.to_thread(self.cluster.kill, broker)
        self.cluster.start(broker)
        await self.recover(fault, health, [broker], "the restart")

    async def kill_node(self, fault: Fault, health: list[httpx.AsyncClient]) -> None:
        """SIGKILL, down `node_down_s`, then started again. Of the phones on
        it (it has the most), one is offline for `offline_s` from the kill;
        the others move to the live nodes at once."""
        assert self.cluster is not None
        broker = self.victim(most_phones=True)
        on_it = self.phones_on(broker)
        connected = [s for s in on_it if s.route.where() == f"on {broker.node}"]
        await asyncio.to_thread(self.cluster.kill, broker)
        killed = self.now()
        held = (self.rng.choice(connected or on_it) if len(on_it) > 1 and self.cfg.offline_s > 0
                else None)
        if held is not None:
            go_offline(held, killed + self.cfg.offline_s)
        self.calm_until = killed + self.cfg.lease_s * 4 / 3 + 1.0 + 2 * self.cfg.reconnect_s
        await asyncio.sleep(self.cfg.node_down_s)
        self.cluster.start(broker)
        fault.note = (f"{broker.node} down {self.now() - killed:.1f} s, {len(on_it)} phone(s) on it"
                      + (f", {held.name} offline {self.cfg.offline_s:g} s" if held else ""))
        await self.recover(fault, health, [broker], "its start")

    async def recover(self, fault: Fault, health: list[httpx.AsyncClient],
                      brokers: list[BrokerProcess], since: str) -> None:
        """/health ok at each of `brokers` again, or a fault problem."""
        assert self.cluster is not None
        started = time.monotonic()
        for broker in brokers:
            client = health[self.cluster.brokers.index(broker)]
            if await wait_healthy(client, broker, self.cfg.recover_s) is None:
                self.evidence.fault_problems.append(
                    f"{fault.kind} at {fault.at_s:.1f} s: no /health ok at {broker.node} within"
                    f" {self.cfg.recover_s:g} s of {since} (exit code {broker.exited()})")
                return
        fault.recovered_s = time.monotonic() - started

    async def restart_pg(self, fault: Fault, health: list[httpx.AsyncClient]) -> None:
        assert self.cluster is not None
        asking = self.cluster.brokers.index(self.cluster.running()[0])
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.pg.stop)
        stopped = self.now()
        down = loop.time()
        # What /health says while PostgreSQL is down (`degraded` is promised).
        seen: Counter[str] = Counter()
        while loop.time() - down < self.cfg.pg_down_s:
            try:
                r = await health[asking].get("/health", timeout=3)
                seen[f"{r.status_code} {r.json().get('status')}"] += 1
            except (httpx.TransportError, ValueError) as err:
                seen[type(err).__name__] += 1
            await asyncio.sleep(0.2)
        await asyncio.to_thread(self.pg.start)
        self.outages.append((stopped, self.now()))
        fault.note = (f"down {loop.time() - down:.1f} s, /health meanwhile "
                      + ", ".join(f"{k} x{n}" for k, n in sorted(seen.items())))
        await self.recover(fault, health, self.cluster.running(),
                           "its start (the pool did not heal)")

    # -- the webhook receiver --

    def answer(self, got: Got) -> Reply:
        return Reply(500 if self.answers_rng.random() < self.cfg.receiver_500 else 204)

    async def subscribe(self, http: httpx.AsyncClient, api_keys: list[str]) -> None:
        """An endpoint for every event per account, made through the API as a
        customer makes one; its secret (shown once) to the receiver."""
        for key in api_keys:
            r = await http.post("/webhooks", json={"url": self.receiver.url, "events": ["*"]},
                                headers={"x-api-key": key})
            if r.status_code != 201:
                raise RuntimeError(f"POST /webhooks answered {r.status_code}: {r.text[:300]}")
            self.receiver.secrets.append(r.json()["data"]["secret"])

    async def take_receiver_down(self) -> None:
        """Once, when a random share (20-80 %) of the messages is accepted."""
        while len(self.evidence.accepted) < self.receiver_mark and not self.sends_done.is_set():
            self.accepted_changed.clear()
            await self.accepted_changed.wait()
        at, accepted = self.now(), len(self.evidence.accepted)
        await self.receiver.stop()
        await asyncio.sleep(self.cfg.receiver_down_s)
        await self.receiver.start()
        self.receiver_down.append(f"{self.now() - at:.1f} s from {at:.1f} s"
                                  f" ({accepted} accepted)")

    async def drain_outbox(self) -> tuple[float, int]:
        """Poll PostgreSQL until no event is pending; (seconds, pending left)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        pending = -1
        while loop.time() - started < self.cfg.drain_s:
            try:
                db = await asyncpg.connect(self.dsn, timeout=5)
                try:
                    pending = int(await db.fetchval(
                        "SELECT count(*) FROM webhook_events WHERE state = 'pending'"))
                finally:
                    await db.close()
            except (*store.DATABASE_DOWN, asyncpg.PostgresError):
                pending = -1
            if pending == 0:
                # The sender records an outcome after its answer came: the
                # receiver has every request by now.
                return loop.time() - started, 0
            await asyncio.sleep(0.2)
        return loop.time() - started, pending

    # -- phones --

    async def drop_phones(self) -> None:
        lo, hi = self.cfg.drop_every_s
        while True:
            await asyncio.sleep(self.rng.uniform(lo, hi))
            sim = self.rng.choice(self.sims)
            if sim.connected and self.now() >= self.calm_until:
                sim.drops += 1
                sim.route.dropping()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        await sim.drop_connection()

    # -- presence --

    async def sample_all(self) -> None:
        """The presence table every `sample_s`, until cancelled; none while
        PostgreSQL is away."""
        db: asyncpg.Connection | None = None
        try:
            while True:
                try:
                    if db is None or db.is_closed():
                        db = await asyncpg.connect(self.dsn, timeout=2)
                    self.samples.append(await sample_presence(db, self.now))
                except (*store.DATABASE_DOWN, asyncpg.PostgresError):
                    if db is not None:
                        db.terminate()
                    db = None
                due = self.now() + self.cfg.sample_s
                await asyncio.sleep(self.cfg.sample_s)
                # This loop late: the phones' records of their connections
                # are late as much (their frames wait in the same loop).
                if (late := self.now() - due) > STALL_S:
                    self.stalls.append((due, self.now()))
                    self.worst_stall = max(self.worst_stall, late)
        finally:
            if db is not None:
                db.terminate()

    async def sample_end(self) -> None:
        """The end's sample: the first that passes the presence checks' end,
        or the last within a killed node's lapse and a reconnect (they are
        settled by then, or something keeps them from it)."""
        e = self.evidence
        loop = asyncio.get_running_loop()
        deadline = loop.time() + e.lapse_s + e.reconnect_s + 2.0
        db = await asyncpg.connect(self.dsn, timeout=10)
        try:
            while True:
                e.timelines = {s.device_id or "": list(s.route.timeline) for s in self.sims}
                e.presence_end = await sample_presence(db, self.now)
                if loop.time() > deadline or not any(
                        p.startswith("at the end") for check in (rows_live, rows_where_connected)
                        for p in check(e)[0]):
                    return
                await asyncio.sleep(self.cfg.sample_s)
        finally:
            await db.close()

    def phone_done(self, sim: SoakSim | SoakAppSim, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        what = ("refused with 401" if isinstance(err, DeviceRejected) else
                repr(err) if err is not None else "was replaced (close 4000)")
        self.evidence.phone_problems.append(f"{sim.name} stopped at {self.now():.1f} s: {what}")

    # -- the end --

    async def settle(self) -> float:
        """Poll PostgreSQL until every message is final; seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < self.cfg.settle_s:
            try:
                db = await asyncpg.connect(self.dsn, timeout=5)
                try:
                    rows = await db.fetch("SELECT id::text, status FROM messages")
                finally:
                    await db.close()
            except (*store.DATABASE_DOWN, asyncpg.PostgresError):
                rows = None
            if rows is not None and all(is_final(r["status"], self.outcomes.get(r["id"]))
                                        for r in rows):
                await asyncio.sleep(0.5)  # a moment for a late duplicate to show itself
                return loop.time() - started
            await asyncio.sleep(0.25)
        return loop.time() - started

    async def collect(self) -> None:
        e = self.evidence
        db = await asyncpg.connect(self.dsn, timeout=10)
        try:
            for r in await db.fetch(
                    "SELECT id::text, status, device_id::text, body FROM messages"):
                e.rows[r["id"]] = Row(r["id"], r["status"], r["device_id"], r["body"])
            for r in await db.fetch("SELECT key, message_id::text FROM idempotency_keys"):
                e.key_rows[r["key"]] = r["message_id"]
            for r in await db.fetch("SELECT message_id::text, status, at FROM message_history"):
                e.history.setdefault(r["message_id"], []).append(Step(r["status"], r["at"]))
            for r in await db.fetch("SELECT state, count(*) AS n FROM webhook_events"
                                    " GROUP BY state"):
                e.outbox[r["state"]] = r["n"]
            for r in await db.fetch(
                    "SELECT CASE WHEN status_code IS NOT NULL THEN status_code::text"
                    " ELSE 'no answer' END AS outcome, count(*) AS n FROM webhook_attempts"
                    " GROUP BY 1"):
                self.attempts[r["outcome"]] = r["n"]
        finally:
            await db.close()
        assert self.cluster is not None
        for broker in self.cluster.running():
            if broker.exited() is not None:
                e.fault_problems.append(f"{broker.node} exited by itself (code {broker.exited()})")
        e.sends = {s.device_id or "": Counter(s.sent_count) for s in self.sims}
        e.kinds = {s.device_id or "": s.kind for s in self.sims}
        e.outcomes = dict(self.outcomes)
        e.arrivals = [_arrival(g) for g in self.receiver.requests]
        by_device = {s.device_id: s for s in self.sims}
        for mid, row in e.rows.items():
            sim = by_device.get(row.device_id or "")
            if sim is not None and not is_final(row.status, self.outcomes.get(mid)):
                e.phone_views[mid] = sim.view(mid)
        e.presence = list(self.samples)
        e.lives = {node: list(life) for node, life in self.cluster.lives.items()}
        e.outages = list(self.outages)
        e.stalls = list(self.stalls)
        e.jobs_seen = [job for s in self.sims for job in s.route.jobs]
        # A killed node's rows: its lease lapses (lease_s after its last
        # renewal), then a live node's lease turn reaps them (every lease / 3).
        e.lapse_s = self.cfg.lease_s * 4 / 3 + 1.0
        e.reconnect_s = self.cfg.reconnect_s
        await self.sample_end()

    async def run(self) -> tuple[float, float, float]:
        """Everything but clean-up; returns (send phase s, settle s, drain s)."""
        smsgate = self.cfg.phones // 2 if self.cfg.smsgate is None else self.cfg.smsgate
        tenant = await prepare(await asyncio.to_thread(self.pg.start_first), self.cfg.phones,
                               smsgate)
        self.dsn = tenant.dsn
        self.key_kinds = dict(zip(tenant.keys, tenant.key_kinds, strict=True))
        cluster = self.cluster = Cluster(self.workdir, tenant.dsn, self.cfg.nodes, self.cfg.bus,
                                         self.cfg.lease_s, self.now)
        await asyncio.to_thread(cluster.start_all)
        await self.receiver.start()
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        limits = httpx.Limits(max_connections=self.cfg.concurrency + 4)
        async with contextlib.AsyncExitStack() as clients:
            http = [await clients.enter_async_context(httpx.AsyncClient(
                base_url=url, timeout=8.0, trust_env=False, limits=limits))
                for url in cluster.urls]
            health = [await clients.enter_async_context(httpx.AsyncClient(
                base_url=url, timeout=2.0, trust_env=False)) for url in cluster.urls]
            try:
                for broker, client in zip(cluster.brokers, health, strict=True):
                    if await wait_healthy(client, broker, self.cfg.recover_s) is None:
                        raise RuntimeError(f"no /health ok at {broker.node} within"
                                           f" {self.cfg.recover_s:g} s of start")
                await self.subscribe(http[0], tenant.keys)
                for i, (device_id, name, token, transport) in enumerate(tenant.devices):
                    route = Route(cluster.names, cluster.urls, i, self.now)
                    sim: SoakSim | SoakAppSim
                    if transport == store.SMSGATE:
                        sim = SoakAppSim(route, token, device_id, name,
                                         SoakAppPhone(self.cfg.seed, self.outcomes),
                                         delay_ms=self.rng.randint(0, 200))
                    else:
                        sim = SoakSim(route, token, device_id, name,
                                      SoakPhone(self.cfg.seed, self.outcomes),
                                      delay_ms=self.rng.randint(0, 200))
                    self.sims.append(sim)
                    task = loop.create_task(sim.run(), name=name)
                    task.add_done_callback(functools.partial(self.phone_done, sim))
                    tasks.append(task)
                tasks.append(loop.create_task(self.sample_all()))
                await _wait_for(lambda: all(s.connected for s in self.sims), 15.0,
                                "every phone to connect")
                dropper = loop.create_task(self.drop_phones())
                faults = loop.create_task(self.run_faults(health))
                outage = loop.create_task(self.take_receiver_down())
                tasks += [dropper, faults, outage]
                sending = time.monotonic()
                await self.send_all(http, tenant.keys)
                send_s = time.monotonic() - sending
                await faults
                await outage
                # No more drops: from here a report must arrive without the
                # help of a reconnect.
                dropper.cancel()
                settle_s = await self.settle()
                drain_s, self.pending_left = await self.drain_outbox()
                # A phone still offline (its network down since a node kill)
                # is back before the end: what it holds is counted too.
                with contextlib.suppress(RuntimeError):
                    await _wait_for(lambda: all(s.connected for s in self.sims),
                                    self.cfg.offline_s + 15.0, "every phone to connect again")
                await asyncio.sleep(0.5)  # its outbox said again, if it held anything
                await self.collect()
                return send_s, settle_s, drain_s
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.receiver.stop()

    def figures(self, send_s: float, settle_s: float, drain_s: float) -> dict[str, Any]:
        e, cfg = self.evidence, self.cfg
        total: Counter[str] = Counter()
        for s in self.sims:
            total.update(s.sent_count)
        reconnects = sum(s.connections for s in self.sims) - len(self.sims)
        kinds: dict[str, list[SoakSim | SoakAppSim]] = {}
        for s in self.sims:
            kinds.setdefault(s.kind, []).append(s)
        apps = [s for s in self.sims if isinstance(s, SoakAppSim)]

        def refused(sims: list[SoakSim | SoakAppSim]) -> str:
            return _counts(Counter(d.split(":")[0] for s in sims
                                   for details in s.refused.values() for d in details))

        return {
            "seed": cfg.seed,
            "messages (one key each)": cfg.messages,
            "answered 201": len(e.accepted),
            "messages in PostgreSQL": len(e.rows),
            "retries": f"{sum(self.retries.values())} ({_counts(self.retries)})",
            "answers": _counts(e.answers),
            f"answers after > {SLOW_S:g} s": self.slow,
            "nodes": (f"{cfg.nodes} ({cfg.bus} bus, lease {cfg.lease_s:g} s)" if cfg.nodes > 1
                      else "1"),
            "broker SIGKILLs": sum(f.kind == "kill" for f in self.faults),
            "node SIGKILLs (down a while)": sum(f.kind == "node kill" for f in self.faults),
            "PostgreSQL restarts": sum(f.kind == "pg restart" for f in self.faults),
            "final by status": _counts(final_counts(e.rows)),
            "phones reported": _counts(Counter(self.outcomes.values())),
            "phones": ", ".join(f"{len(sims)} {kind}" for kind, sims in sorted(kinds.items())),
            "SMS sent per phone": " | ".join(
                f"{kind}: " + " ".join(str(sum(s.sent_count.values())) for s in sims)
                for kind, sims in sorted(kinds.items())),
            "SMS sent in all": f"{sum(total.values())} (" + ", ".join(
                f"{kind} {sum(sum(s.sent_count.values()) for s in sims)}"
                for kind, sims in sorted(kinds.items())) + ")",
            "max SMS per id": max(total.values(), default=0),
            "error frames to phones": refused(kinds.get(store.WEBSOCKET, [])),
            "refusals seen by apps": refused(kinds.get(store.SMSGATE, [])),
            "app jobs given back unsent": sum(j.state == "Cancelled" for s in apps
                                              for j in s.jobs.values()),
            "app PATCHes said again": sum(s.patch_retries for s in apps),
            "phone drops / reconnects": f"{sum(s.drops for s in self.sims)} / {reconnects}",
            "phone moves to another node": sum(s.route.moves for s in self.sims),
            "phones per node at the end": _counts(Counter(
                s.route.timeline[-1][1] or "none" for s in self.sims if s.route.timeline)),
            "jobs to phones, by node": _counts(Counter(j.node for j in e.jobs_seen)),
            "sends taken where no phone was": f"{self.remote_sends} (none of its account's"
                                              " phones on the node that took it)",
            "presence samples": f"{len(e.presence)}, every {cfg.sample_s:g} s",
            f"soak's own loop late > {STALL_S:g} s": (
                f"{len(self.stalls)} times, at worst {self.worst_stall:.2f} s" if self.stalls
                else "never"),
            "send phase": f"{send_s:.1f} s at {cfg.rate:g}/s, {cfg.concurrency} in flight",
            "settle (until all final)": f"{settle_s:.1f} s",
            **self.webhook_figures(drain_s),
        }

    def webhook_figures(self, drain_s: float) -> dict[str, Any]:
        e = self.evidence
        events = delivered_events(e)
        answered = sum(1 for a in e.arrivals if a.ok)
        by_type = Counter(a.type.split(".")[0] for a in events)
        left = "" if self.pending_left == 0 else f", {self.pending_left} still pending"
        return {
            "webhook events delivered": f"{len(events)} deduped ({_counts(by_type)})",
            "receiver requests": f"{len(e.arrivals)} ("
                                 + _counts(Counter(str(a.answered) for a in e.arrivals)) + ")",
            "duplicates dropped by id": answered - len(events),
            "webhook attempts recorded": f"{sum(self.attempts.values())} ("
                                         f"{_counts(self.attempts)})",
            "receiver down": ", ".join(self.receiver_down) or "never",
            "outbox drained (after settle)": f"{drain_s:.1f} s{left}",
        }


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "none"


async def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _arrival(got: Got) -> Arrival:
    kind = str(got.body.get("type", ""))
    data = got.body.get("data")
    message = isinstance(data, dict) and kind.startswith("message.") and kind != "message.received"
    return Arrival(got.webhook_id, kind, str(data.get("id")) if message else None,
                   str(data.get("status")) if message else None, got.verified, got.status)


def _message(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("message") if isinstance(body, dict) else None


def _log_tails(logs: list[Path], lines: int) -> str:
    return "\n".join(f"errors in {log}:\n{errors(log)}\nlast lines:\n{tail(log, lines)}"
                     for log in logs)


async def run_soak(cfg: SoakConfig) -> SoakReport:
    """One soak. Always stops the brokers (the nats-server) and the
    PostgreSQL it started; the work dir is removed after a pass unless
    `cfg.keep` or `cfg.workdir`."""
    workdir = cfg.workdir or Path(tempfile.mkdtemp(prefix="smsdora-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(cfg, workdir)
    report: SoakReport | None = None
    try:
        try:
            async with asyncio.timeout(cfg.overall_s):
                send_s, settle_s, drain_s = await soak.run()
        except (TimeoutError, RuntimeError, OSError, asyncpg.PostgresError,
                subprocess.SubprocessError) as err:
            what = (f"not done within {cfg.overall_s:g} s" if isinstance(err, TimeoutError)
                    else f"{type(err).__name__}: {err}")
            logs = soak.cluster.logs if soak.cluster else [workdir / "broker.log"]
            raise SoakAborted(f"soak aborted at {soak.now():.1f} s: {what}\nwork dir {workdir}\n"
                              f"{_log_tails(logs, 20)}") from err
        assert soak.cluster is not None
        report = SoakReport(cfg, soak.evidence, check_all(soak.evidence), soak.faults,
                            soak.figures(send_s, settle_s, drain_s), workdir, soak.now(),
                            soak.cluster.logs)
        return report
    finally:
        if soak.cluster is not None:
            await asyncio.to_thread(soak.cluster.shutdown)
        await asyncio.to_thread(soak.pg.shutdown)
        if report is not None and report.ok and not cfg.keep and cfg.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    d = SoakConfig()
    p = argparse.ArgumentParser(prog="python -m tests.fault.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=d.messages)
    p.add_argument("--phones", type=int, default=d.phones)
    p.add_argument("--smsgate", type=int, default=None, metavar="S",
                   help="how many of the phones are SMS Gateway apps (default half)")
    p.add_argument("--kills", type=int, default=d.kills, help="broker SIGKILLs")
    p.add_argument("--pg-restarts", type=int, default=d.pg_restarts)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--rate", type=float, default=d.rate, help="messages started per second")
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--pg-down", type=float, default=d.pg_down_s, metavar="SECONDS",
                   help="how long PostgreSQL stays stopped per restart")
    p.add_argument("--settle", type=float, default=d.settle_s, metavar="SECONDS")
    p.add_argument("--receiver-down", type=float, default=d.receiver_down_s, metavar="SECONDS",
                   help="how long the webhook receiver is off the network, once")
    p.add_argument("--nodes", type=int, default=d.nodes,
                   help="broker nodes on the one PostgreSQL (CONTRACT section 13)")
    p.add_argument("--bus", choices=("postgres", "nats"), default=d.bus,
                   help="between the nodes: LISTEN/NOTIFY, or a nats-server of the soak's own")
    p.add_argument("--node-kills", type=int, default=d.node_kills, metavar="K",
                   help="SIGKILLs of a node that stays down a while (--nodes 2 or more)")
    p.add_argument("--node-down", type=float, default=d.node_down_s, metavar="SECONDS",
                   help="how long a node killed by --node-kills stays down")
    p.add_argument("--workdir", type=Path, help="default: a fresh temp dir")
    p.add_argument("--keep", action="store_true", help="keep the work dir after a pass")
    args = p.parse_args(argv)
    if (args.messages < 1 or args.phones < 1 or args.kills < 0 or args.pg_restarts < 0
            or args.rate <= 0 or args.concurrency < 1
            or not 0 <= (args.smsgate or 0) <= args.phones or args.nodes < 1
            or args.node_kills < 0 or (args.node_kills and args.nodes < 2)):
        p.error("--messages, --phones, --concurrency, --nodes at least 1; --rate above 0;"
                " --kills, --pg-restarts, --node-kills not negative; --smsgate at most"
                " --phones; --node-kills with --nodes 2 or more")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    cfg = SoakConfig(messages=args.messages, phones=args.phones, smsgate=args.smsgate,
                     kills=args.kills,
                     pg_restarts=args.pg_restarts, seed=args.seed, rate=args.rate,
                     concurrency=args.concurrency, pg_down_s=args.pg_down,
                     settle_s=args.settle, receiver_down_s=args.receiver_down,
                     workdir=args.workdir, keep=args.keep, nodes=args.nodes, bus=args.bus,
                     node_kills=args.node_kills, node_down_s=args.node_down)
    try:
        report = asyncio.run(run_soak(cfg))
    except SoakAborted as err:
        print(err, file=sys.stderr)
        return 1
    print(report.table())
    if not report.ok:
        print(f"\n{report.log_tail()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
