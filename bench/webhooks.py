"""The webhook phase: what the outbox sender delivers, and what the outbox
costs the send path (CONTRACT section 9), in a broker of its own.

Three accounts, each with an API key (`messages:send`, `webhooks:write`)
and `phones` WebSocket phones (bench/phones.py) with no send rate: the
accept runs below fill the phones' in-flight windows with jobs they never
answer, so each run has fresh phones of its own. The receiver
(bench/webhook_receiver.py) is a bare uvicorn app answering 204 in its own
process; the broker runs with its webhook settings as shipped but for
SMSDORA_WEBHOOK_ALLOW_PRIVATE=1 (the receiver is on loopback).

1. Delivery rate from a full outbox: `prefill` message events (4 a
   message: queued, dispatching, sending, delivered, so the per-message
   order holds them in line as it would real ones) written in one INSERT
   for the `hooked` account's endpoint ("*"); events/s is the receiver's
   distinct webhook-ids over first to last arrival.
2. Events produced by sends: an open loop at `rate` sends a second for
   `seconds` to the `hooked` account, whose phones answer (ack, sent,
   delivered: five events a message); per event, the history row's `at`
   (the writing transaction's now(), a ms or so before its commit) to the
   receiver's first arrival of its webhook-id, p50 / p99, and the rate
   they were delivered at.
3. The accept path (bench/run.py `closed`: the closed loop, phones holding
   their reports, 201s whose `send` frame reached a phone, after the
   warm-up) with no endpoint (`plain-1`), with one endpoint for "*"
   (`hooked`: every send writes its two events, queued and dispatching,
   and the sender delivers them meanwhile, in the same process), and with
   no endpoint again (`plain-2`), in that order, so that a drift within
   the run shows; with-endpoint ÷ the mean of the two without is the cost.
   Between the second and the third, the endpoint is disabled (its owed
   events fail at once): the third run does not share the broker with the
   second's backlog.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import msgspec

from bench import database, report
from bench.fleet import Fleet
from bench.procs import Controlled, free_port, wait_port
from bench.sse import percentiles
from broker import store

if TYPE_CHECKING:
    from bench.run import Bench

ACCOUNTS = ("hooked", "plain-1", "plain-2")
ENDPOINTS = 4  # the full outbox's second run: shared by this many endpoints
SCOPES = ["messages:send", "webhooks:write"]


@dataclass(frozen=True)
class WebhookSizes:
    phones: int  # per account
    prefill: int  # events in the outbox before the sender looks
    rate: float  # sends a second in the latency run
    seconds: float  # the latency run
    connect_s: float
    drain_s: float  # longest wait for the outbox to empty (prefill, latency run)


def sizes(quick: bool) -> WebhookSizes:
    if quick:
        return WebhookSizes(phones=20, prefill=400, rate=10, seconds=1.0, connect_s=20,
                            drain_s=20)
    # 200 phones, each with the default in-flight window of 100: room for
    # 20k held jobs, more than an 8 s accept run gives one account. The
    # latency run's 10 sends a second write about 50 events a second, well
    # below what one endpoint is delivered (the full outbox's figure).
    return WebhookSizes(phones=200, prefill=2000, rate=10, seconds=5.0, connect_s=30,
                        drain_s=30)


@dataclass(frozen=True)
class Accounts:
    ids: dict[str, uuid.UUID]
    keys: dict[str, str]
    tokens: list[str]  # account ACCOUNTS[i // phones]'s phones


async def seed(dsn: str, secret: bytes, phones: int) -> Accounts:
    db = await store.connect(dsn)
    try:
        ids: dict[str, uuid.UUID] = {}
        api_keys: dict[str, str] = {}
        tokens: list[str] = []
        for name in ACCOUNTS:
            # send_rate 0: the accept runs measure the API, not the pacing.
            account, key, made = await database.add_account(
                db, secret, f"webhooks-{name}", SCOPES, phones, 0)
            ids[name], api_keys[name] = account, key
            tokens += made
        return Accounts(ids, api_keys, tokens)
    finally:
        await db.close()


# `data` as the trigger writes it for a message event (migration 0006).
# Written as if over the last moments, 0.1 ms apart, in seq order, as sends
# write them: every row of one INSERT sharing one `next_at` would make each
# claim sort the whole backlog (the claim orders by next_at, seq), which
# no real backlog does.
_PREFILL = """
INSERT INTO webhook_events (webhook_id, account_id, type, message_id, data, occurred_at,
                            next_at, created_at)
SELECT $1, $2, 'message.' || s.status, m.id,
       jsonb_build_object('id', m.id, 'recipient', '+16502530000',
                          'message', 'Your code is 4829', 'status', s.status, 'device', NULL,
                          'error', NULL, 'createdAt', smsdora_iso(now())),
       t.at, t.at, t.at
  FROM (SELECT gen_random_uuid() AS id, n FROM generate_series(1, $3) AS n) m
 CROSS JOIN LATERAL unnest(ARRAY['queued', 'dispatching', 'sending', 'delivered'])
       WITH ORDINALITY AS s(status, k)
 CROSS JOIN LATERAL (SELECT now() - (4 * $3 - (m.n - 1) * 4 - s.k)
                            * interval '100 microseconds' AS at) t
 ORDER BY m.n, s.k
"""


async def prefill(dsn: str, hooks: list[uuid.UUID], account: uuid.UUID, events: int) -> None:
    """`events` message events, 4 a message, shared out among `hooks`, in
    one transaction: the sender sees them all at once."""
    db = await asyncpg.connect(dsn, timeout=10)
    try:
        async with db.transaction():
            for hook in hooks:
                await db.execute(_PREFILL, hook, account, max(1, events // 4 // len(hooks)))
    finally:
        await db.close()


async def outbox_since(dsn: str, after_seq: int) -> dict[str, Any]:
    """The events after `after_seq`: id -> occurred_at (ns), and how many
    are still pending."""
    db = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await db.fetch("SELECT id::text, occurred_at, state FROM webhook_events"
                              " WHERE seq > $1", after_seq)
        last = await db.fetchval("SELECT COALESCE(max(seq), 0) FROM webhook_events")
    finally:
        await db.close()
    return {"at_ns": {r["id"]: int(r["occurred_at"].timestamp() * 1e9) for r in rows},
            "pending": sum(r["state"] == "pending" for r in rows), "last_seq": int(last)}


def last_seq(bench: Bench) -> int:
    return int(asyncio.run(outbox_since(bench.dsn, 2**62))["last_seq"])


def wait_drained(bench: Bench, after_seq: int, limit_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while True:
        out = asyncio.run(outbox_since(bench.dsn, after_seq))
        if out["pending"] == 0 or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def delivery(events: dict[str, Any], arrived: dict[str, int]) -> dict[str, Any]:
    """Events/s over the first to the last arrival of these events, and
    written -> first arrival per event."""
    at = events["at_ns"]
    got = [arrived[i] for i in at if i in arrived]
    span_s = (max(got) - min(got)) / 1e9 if len(got) > 1 else 0.0
    lag = [(arrived[i] - t) / 1e6 for i, t in at.items() if i in arrived]
    return {"events": len(at), "arrived": len(got), "pending": events["pending"],
            "span_s": span_s, "per_s": (len(got) - 1) / span_s if span_s > 0 else 0.0,
            "latency": percentiles(lag)}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def phase(bench: Bench, quick: bool) -> dict[str, Any]:
    ws = sizes(quick)
    started = time.monotonic()
    accounts = asyncio.run(seed(bench.dsn, bench.secret.encode(), ws.phones))
    tokens = bench.workdir / "tokens-webhooks.json"
    tokens.write_bytes(msgspec.json.encode(accounts.tokens))
    receiver_port, port = free_port(), free_port()
    receiver = Controlled(bench.procs.spawn(
        "webhook-receiver", ["-m", "bench.webhook_receiver", "--port", str(receiver_port)],
        control=True))
    proc, _ = bench.start_broker(port, {"SMSDORA_WEBHOOK_ALLOW_PRIVATE": "1"})
    fleet = Fleet(bench.procs, f"ws://127.0.0.1:{port}/devices/ws", tokens, "webhooks")
    out: dict[str, Any] = {"sizes": asdict(ws)}
    try:
        wait_port(receiver_port, receiver.proc, 30)
        wait_port(port, proc, 60)
        fleet.start((0, len(accounts.tokens)))
        out["online"], _ = fleet.wait_connected(len(accounts.tokens), ws.connect_s)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False,
                          timeout=30, headers={"x-api-key": accounts.keys["hooked"]}) as http:
            hooks = [_create(http, receiver_port) for _ in range(ENDPOINTS)]

            # 1. a full outbox, for one endpoint, then shared by four
            for n in (1, ENDPOINTS):
                before = last_seq(bench)
                asyncio.run(prefill(bench.dsn, hooks[:n], accounts.ids["hooked"], ws.prefill))
                events = wait_drained(bench, before, ws.drain_s)
                out[f"prefilled_{n}"] = {**delivery(events, _dump(bench, receiver)),
                                         "endpoints": n}
            for hook in hooks[1:]:
                http.delete(f"/webhooks/{hook}").raise_for_status()

            # 2. events written by sends, phones answering
            before = last_seq(bench)
            run = bench.loadgen("load-webhooks-open", port, "open", 8, ws.seconds,
                                rate=ws.rate, key=accounts.keys["hooked"])
            events = wait_drained(bench, before, ws.drain_s)
            out["from_sends"] = {**delivery(events, _dump(bench, receiver)),
                                 "sends": len(run["ids"]), "statuses": run["statuses"],
                                 "offered_per_s": ws.rate, "seconds": ws.seconds}

            # 3. the accept path without, with, and again without an endpoint
            fleet.hold(True)
            accept: dict[str, Any] = {}
            for name in ("plain-1", "hooked", "plain-2"):
                if name == "plain-2":
                    # DELETE, not PATCH enabled=false: disabling an endpoint
                    # while its attempts are under way makes their outcomes'
                    # batch fail to record (docs/PERFORMANCE.md "Webhooks").
                    http.delete(f"/webhooks/{hooks[0]}").raise_for_status()
                    time.sleep(1.0)
                ids0, seq0 = receiver.call({"cmd": "stats"})["ids"], last_seq(bench)
                row = closed(bench, fleet, port, accounts.keys[name], name)
                row["events_delivered"] = receiver.call({"cmd": "stats"})["ids"] - ids0
                row["events_written"] = last_seq(bench) - seq0
                accept[name] = row
            fleet.hold(False)
            without = (accept["plain-1"]["accept_per_s"] + accept["plain-2"]["accept_per_s"]) / 2
            out["accept"] = {**accept, "without_mean_per_s": without,
                             "ratio": _ratio(accept["hooked"]["accept_per_s"], without)}
            out["receiver"] = receiver.call({"cmd": "stats"})
    finally:
        try:
            receiver.call({"cmd": "quit"}, timeout_s=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        receiver.proc.stop(grace_s=5)
        fleet.quit()
        proc.stop()
    out["elapsed_s"] = time.monotonic() - started
    return out


def _create(http: httpx.Client, receiver_port: int) -> uuid.UUID:
    r = http.post("/webhooks", json={"url": f"http://127.0.0.1:{receiver_port}/hook",
                                     "events": ["*"]})
    r.raise_for_status()
    return uuid.UUID(r.json()["data"]["id"])


def closed(bench: Bench, fleet: Fleet, port: int, key: str, tag: str) -> dict[str, Any]:
    """bench/run.py's accept-path run, phones already holding, on `key`."""
    run = bench.loadgen(f"load-webhooks-{tag}", port, "closed", bench.sz.closed_conns,
                        bench.sz.closed_s, key=key)
    frames = fleet.dump_frames(bench.workdir, f"webhooks-{tag}")
    return {"accept_per_s": report.answered_rate(run, bench.sz.warmup_s, frames),
            "answered_per_s": report.answered_rate(run, bench.sz.warmup_s),
            "statuses": run["statuses"], "frames": len(frames), "loadgen_cores": run["cores"]}


def _dump(bench: Bench, receiver: Controlled) -> dict[str, int]:
    path = bench.workdir / "webhook-arrivals.json"
    receiver.call({"cmd": "dump", "path": str(path)}, timeout_s=60)
    arrived: dict[str, int] = msgspec.json.decode(path.read_bytes())
    path.unlink()
    return arrived
