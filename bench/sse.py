"""The SSE phase: a send to a phone on the SMS Gateway for Android app's
mobile API (`GET /events`, contract section 8) against a send to a
WebSocket phone, at the same request rate, in the same broker, one after
the other.

Two groups of phones, each in an account of its own with its own API key
(an account's send goes to the freshest connected phone of that account,
so each key reaches only its own group): `phones` WebSocket phones
(bench/phones.py) and as many SSE phones (bench/sse_phones.py), all
connected during both runs, every device at the run's send rate and under
the broker's admission limits as in the rest of the run (30 SMS a minute
and the defaults; in `--quick` no send rate and the limits lifted). At 30 a
minute the freshest phone takes 30 jobs, then the next: with no rate one
WebSocket phone would take every job and its reports would meet the
broker's frame-rate limit (50 a second), which is not what this measures.
Then an open
loop (bench/loadgen.py) at `rate` sends a second for `seconds` with the
WebSocket group's key, its messages drained, then the same with the SSE
group's key.

Per message, on one clock (`time.time_ns()` in every process):
- WebSocket: request written -> `send` frame read by the phone;
- SSE: request written -> the first `event: MessageEnqueued` the phone that
  listed the job read after it (a job listed by a look that an earlier
  event started has no event of its own: counted, left out of that leg),
  and request written -> the answer of the phone's `GET /message` that
  first listed the job read.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from bench import database, report
from bench.fleet import Fleet
from bench.procs import Controlled, free_port, wait_port
from broker import store

if TYPE_CHECKING:
    from bench.run import Bench


@dataclass(frozen=True)
class SseSizes:
    phones: int  # in each group
    rate: float  # sends a second, both runs
    seconds: float  # each run
    conns: int  # the open loop's first connections
    connect_s: float  # longest wait for a group to connect
    drain_s: float  # longest wait for a run's messages to be final


def sizes(quick: bool) -> SseSizes:
    if quick:
        return SseSizes(phones=20, rate=50, seconds=1.0, conns=8, connect_s=20, drain_s=5)
    return SseSizes(phones=100, rate=100, seconds=6.0, conns=16, connect_s=30, drain_s=10)


@dataclass(frozen=True)
class Groups:
    ws_key: str
    ws_tokens: list[str]
    sse_key: str
    sse_tokens: list[str]


async def seed(dsn: str, secret: bytes, phones: int, send_rate: int) -> Groups:
    """Two accounts on the bench plan, each with a `messages:send` key
    (no rate limit): `phones` WebSocket devices in one, `phones` SMS
    Gateway devices in the other, all at `send_rate` (SMS a minute)."""
    db = await store.connect(dsn)
    try:
        out: dict[str, tuple[str, list[str]]] = {}
        for name, transport in (("ws-group", store.WEBSOCKET), ("sse-group", store.SMSGATE)):
            _, key, made = await database.add_account(db, secret, name, ["messages:send"],
                                                      phones, send_rate, transport)
            out[name] = key, made
        return Groups(out["ws-group"][0], out["ws-group"][1], out["sse-group"][0],
                      out["sse-group"][1])
    finally:
        await db.close()


def percentiles(values: list[float]) -> dict[str, Any]:
    """Nearest-rank p50 / p90 / p99 and the largest, in ms."""
    v = sorted(values)
    return {"samples": len(v), "p50_ms": report._rank(v, 0.5), "p90_ms": report._rank(v, 0.9),
            "p99_ms": report._rank(v, 0.99), "max_ms": v[-1] if v else 0.0}


def ws_leg(run: dict[str, Any], frames: dict[str, int]) -> dict[str, Any]:
    to_phone = [(frames[mid] - sent) / 1e6 for mid, sent in zip(run["ids"], run["t_send"])
                if mid in frames]
    return {**percentiles(to_phone), "missing": len(run["ids"]) - len(to_phone)}


def sse_legs(run: dict[str, Any], dump: dict[str, Any]) -> dict[str, Any]:
    events: list[list[int]] = dump["events"]
    listed: dict[str, list[int]] = dump["listed"]
    to_event: list[float] = []
    to_listed: list[float] = []
    without_event = 0
    for mid, sent in zip(run["ids"], run["t_send"]):
        got = listed.get(mid)
        if got is None:
            continue
        phone, at = got
        to_listed.append((at - sent) / 1e6)
        seen = events[phone]
        i = bisect.bisect_left(seen, sent)
        if i < len(seen) and seen[i] <= at:
            to_event.append((seen[i] - sent) / 1e6)
        else:
            without_event += 1  # listed by a look an earlier event started
    return {"event": percentiles(to_event), "listed": percentiles(to_listed),
            "missing": len(run["ids"]) - len(to_listed), "without_own_event": without_event}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def open_loop(bench: Bench, name: str, port: int, ss: SseSizes, key: str) -> dict[str, Any]:
    return bench.loadgen(name, port, "open", ss.conns, ss.seconds, rate=ss.rate, key=key)


def run_figures(bench: Bench, run: dict[str, Any], ss: SseSizes) -> dict[str, Any]:
    _, drained = bench.drain(run, ss.drain_s)
    return {"answered_per_s": len(run["ids"]) / max(run["duration_s"], 1e-9),
            "statuses": run["statuses"], "lag_p99_ms": run["lag_p99_ms"],
            "conns": run["conns"], "loadgen_cores": run["cores"], "drained": drained,
            "gc_longest_ms": bench.gc_during(run)["longest_ms"]}


def phase(bench: Bench, quick: bool) -> dict[str, Any]:
    """Seed both groups, start a broker of their own, connect them, and
    measure both runs; every process ended in `finally`."""
    ss = sizes(quick)
    started = time.monotonic()
    groups = asyncio.run(seed(bench.dsn, bench.secret.encode(), ss.phones,
                              bench.sz.send_rate))
    ws_tokens = bench.workdir / "tokens-ws-group.json"
    sse_tokens = bench.workdir / "tokens-sse-group.json"
    ws_tokens.write_bytes(msgspec.json.encode(groups.ws_tokens))
    sse_tokens.write_bytes(msgspec.json.encode(groups.sse_tokens))
    port = free_port()
    proc, _ = bench.start_broker(port)
    fleet = Fleet(bench.procs, f"ws://127.0.0.1:{port}/devices/ws", ws_tokens, "ws-group")
    sse: Controlled | None = None
    try:
        wait_port(port, proc, 60)
        fleet.start((0, ss.phones))
        sse = Controlled(bench.procs.spawn("sse-phones", [
            "-m", "bench.sse_phones", "--port", str(port), "--tokens", str(sse_tokens),
            "--count", str(ss.phones)], control=True))
        ws_online, _ = fleet.wait_connected(ss.phones, ss.connect_s)
        deadline = time.monotonic() + ss.connect_s
        while (sse_online := sse.call({"cmd": "stats"})["online"]) < ss.phones:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # the first looks and their answers settle

        ws_run = open_loop(bench, "load-ws-group", port, ss, groups.ws_key)
        frames = fleet.dump_frames(bench.workdir, "ws-group")
        ws = {**ws_leg(ws_run, frames), **run_figures(bench, ws_run, ss)}
        ws["phones_with_jobs"] = sum(s["phones_with_jobs"] for s in fleet.stats())

        sse_run = open_loop(bench, "load-sse-group", port, ss, groups.sse_key)
        path = bench.workdir / "sse-dump.json"
        sse.call({"cmd": "dump", "path": str(path)}, timeout_s=60)
        dump = msgspec.json.decode(path.read_bytes())
        path.unlink()
        legs = sse_legs(sse_run, dump)
        common = run_figures(bench, sse_run, ss)
        stats = sse.call({"cmd": "stats"})
        sse_row = {**legs, **common, "phones_with_jobs": stats["phones_with_jobs"],
                   "most_jobs": stats["most_jobs"], "counts": stats["counts"],
                   "online_after": stats["online"]}
    finally:
        if sse is not None:
            try:
                sse.call({"cmd": "quit"}, timeout_s=10)
            except (TimeoutError, RuntimeError, OSError):
                pass
            sse.proc.stop(grace_s=5)
        fleet.quit()
        proc.stop()
    ratio = {leg: {q: _ratio(sse_row[leg][q], ws[q]) for q in ("p50_ms", "p90_ms", "p99_ms")}
             for leg in ("event", "listed")}
    return {"sizes": asdict(ss), "rate": ss.rate, "seconds": ss.seconds, "phones": ss.phones,
            "send_rate": bench.sz.send_rate,
            "ws_online": ws_online, "sse_online": sse_online, "ws": ws, "sse": sse_row,
            "ratio": ratio, "elapsed_s": time.monotonic() - started}
