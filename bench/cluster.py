"""The several-nodes phase (CONTRACT section 13): what a send costs when
its phone is held by another node, and what a second worker on one port
gives the accept path on this machine.

Accounts of its own, each with a `messages:send` key: `cross` with `phones`
WebSocket phones (bench/phones.py) at the run's send rate, and one per
accept run with `accept_phones` and no send rate (a run fills its phones'
windows with jobs they never answer). Every broker has the settings of the
rest of the run, its metrics listener off (two would race for one port).

1. Cross-node latency, for each bus (postgres; and nats in the full run
   if /usr/sbin/nats-server exists, started here on a free port): nodes
   `b` and `a` (bench/serve_with_gc.py) on the one PostgreSQL, every phone
   of `cross` connected to `b`. A send through `a` finds no phone there:
   it commits the message `queued` for a phone `b` holds and wakes `b` over
   the bus, which drains it to that phone (broker/cluster/peers.py). Each
   route is first tried with one send until its frame reaches a phone (`a`
   counts `b` live from `b`'s hello or its next lease turn); then an open
   loop (bench/loadgen.py) at `rate` for `seconds` through `b` (same node)
   and, at the same time, another through `a` (cross node), so that both
   meet the same moments of a shared machine. Per message, request written
   -> `send` frame read by the phone, on one clock (time.time_ns()).
   Target: p99(cross) - p99(same) <= 5 ms.
2. One worker against two: `python -m broker serve --workers 1` (one
   process), `--workers 2` (a supervisor, nodes bench-1 and bench-2 on one
   port by SO_REUSEPORT), and in the full run `--workers 1` again, each
   with an account's phones (spread over the workers by the kernel, counted
   from the presence table) holding their reports: the accept path as
   bench/run.py `closed` measures it (closed loop, 201s whose frame reached
   a phone, after the warm-up). Target: two >= one (no collapse).
3. The broker's CPU (utime + stime of the server and its children, /proc)
   over the one-worker runs, divided by their 201s: µs of broker CPU per
   accepted send, and 1e6 / that: sends a second per core.

In `--quick` every broker starts at once and waits its turn (starting is
most of the phase); in the full run each step has the machine to itself,
with no other live node (a node that sees others tells them its keys' use
five times a second).

`python -m bench.cluster` runs the cross-node measure alone, `--runs`
times on one pair of nodes per bus (a PostgreSQL of its own, no other
phase): what to run when working on the cross-node path.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import httpx
import msgspec

from bench import database, report
from bench.fleet import Fleet
from bench.loadgen import BODY
from bench.procs import Proc, cpu_s, free_port, wait_port
from broker import store

if TYPE_CHECKING:
    from bench.run import Bench

NATS_SERVER = Path("/usr/sbin/nats-server")
TARGET_MS = 5.0  # p99 cross-node over p99 same-node
T = TypeVar("T")


@dataclass(frozen=True)
class ClusterSizes:
    phones: int  # the `cross` account's, all at node b
    rate: float  # sends a second, each route
    seconds: float  # the latency runs
    conns: int  # each open loop's first connections
    accept_phones: int  # each accept run's account's
    connect_s: float  # longest wait for phones, nodes, presence rows
    drain_s: float  # longest wait for a latency run's messages to be final
    probe_s: float  # longest wait for a route's first frame
    buses: tuple[str, ...]
    worker_runs: tuple[int, ...]  # `--workers` of each accept run, in order
    together: bool  # every broker started at once


def sizes(quick: bool) -> ClusterSizes:
    if quick:
        return ClusterSizes(phones=20, rate=50, seconds=1.0, conns=8, accept_phones=20,
                            connect_s=20, drain_s=5, probe_s=10, buses=("postgres",),
                            worker_runs=(1, 2), together=True)
    # 300 phones with the default in-flight window of 100 hold 30k jobs,
    # 15k a worker: more than an 8 s accept run gives either.
    # 8 s at 50/s: 400 samples a route, p99 the 4th largest.
    return ClusterSizes(phones=100, rate=50, seconds=8.0, conns=16, accept_phones=300,
                        connect_s=30, drain_s=10, probe_s=15,
                        buses=("postgres", "nats") if NATS_SERVER.exists() else ("postgres",),
                        worker_runs=(1, 2, 1), together=False)


@dataclass(frozen=True)
class Group:
    account: uuid.UUID
    key: str
    tokens: Path  # its phones' tokens (bench/phones.py --tokens)
    phones: int


async def seed(dsn: str, secret: bytes, workdir: Path,
               groups: dict[str, tuple[int, int]]) -> dict[str, Group]:
    """An account on the bench plan per name, with a `messages:send` key
    and (phones, send_rate) WebSocket devices."""
    db = await store.connect(dsn)
    try:
        out: dict[str, Group] = {}
        for name, (phones, send_rate) in groups.items():
            account, key, made = await database.add_account(
                db, secret, f"cluster-{name}", ["messages:send"], phones, send_rate)
            tokens = workdir / f"tokens-cluster-{name}.json"
            tokens.write_bytes(msgspec.json.encode(made))
            out[name] = Group(account, key, tokens, phones)
        return out
    finally:
        await db.close()


def _counts(dsn: str, sql: str, *args: Any) -> dict[str, int]:
    """A `SELECT name, n` as a dict."""
    async def fetch() -> dict[str, int]:
        db = await asyncpg.connect(dsn, timeout=10)
        try:
            return {r[0]: int(r[1]) for r in await db.fetch(sql, *args)}
        finally:
            await db.close()
    return asyncio.run(fetch())


def live_nodes(dsn: str) -> set[str]:
    return set(_counts(dsn, "SELECT name, 1 FROM nodes WHERE lease_until > now()"))


def presence(dsn: str, group: Group, timeout_s: float) -> dict[str, int]:
    """The group's online phones by the node holding them, once all their
    presence rows are written (a batch a loop turn), or at the timeout."""
    def by_node() -> dict[str, int]:
        return _counts(dsn, "SELECT p.node, count(*) FROM presence p JOIN devices d"
                       " ON d.id = p.device_id WHERE d.account_id = $1"
                       " GROUP BY p.node ORDER BY p.node", group.account)
    def all_in() -> dict[str, int] | None:
        got = by_node()
        return got if sum(got.values()) >= group.phones else None
    try:
        return wait_for("presence rows", all_in, timeout_s) or {}
    except RuntimeError:
        return by_node()


def wait_for(what: str, check: Callable[[], T], timeout_s: float) -> T:
    """Poll `check()` until its answer is true, and return that."""
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster phase: {what} not within {timeout_s:g} s")
        time.sleep(0.05)
    return got


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (a supervisor's workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return cpu_s(pid) + sum(tree_cpu_s(int(child)) for child in children)


def io_stalled_s() -> float:
    """Seconds in which every task of the machine waited on I/O, so far
    (/proc/pressure/io `full`; 0 without PSI): a commit's fsync on a disk
    other work shares stalls both routes at once."""
    try:
        full = Path("/proc/pressure/io").read_text().split("full ", 1)[1]
    except (OSError, IndexError):
        return 0.0
    return int(full.rsplit("total=", 1)[1].split()[0]) / 1e6


def end(procs: list[Proc]) -> None:
    """One SIGTERM to each at once, then wait: each drains and frees its
    node name (a second signal makes uvicorn stop without waiting)."""
    for proc in procs:
        if proc.alive():
            proc.popen.terminate()
    for proc in procs:
        try:
            proc.popen.wait(15)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
        proc.stop()


@dataclass
class Pair:
    """Nodes a and b on one bus, the `cross` account's phones at b."""
    bench: Bench
    cs: ClusterSizes
    group: Group
    bus: str
    ports: dict[str, int] = field(default_factory=lambda: {"a": free_port(), "b": free_port()})
    procs: dict[str, Proc] = field(default_factory=dict)
    fleet: Fleet | None = None

    def start(self) -> None:
        env = {"SMSDORA_METRICS_ADDR": "", "SMSDORA_BUS": self.bus}
        if self.bus == "nats":  # a binary, not `python -m`: Procs.spawn is not for it
            port, log = free_port(), self.bench.workdir / "nats-server.log"
            with open(log, "ab") as out:
                popen = subprocess.Popen([str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(port)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            self.procs["nats"] = Proc("nats-server", popen, log)
            self.bench.procs.all.append(self.procs["nats"])  # ended by run.py's finally too
            wait_port(port, self.procs["nats"], 10)
            env["SMSDORA_NATS_URL"] = f"nats://127.0.0.1:{port}"
        for node in ("b", "a"):
            self.procs[node], _ = self.bench.start_broker(
                self.ports[node], {**env, "SMSDORA_NODE": node})
        self.fleet = Fleet(self.bench.procs, f"ws://127.0.0.1:{self.ports['b']}/devices/ws",
                           self.group.tokens, f"cluster-{self.bus}")

    def ready(self) -> None:
        assert self.fleet is not None
        for node in ("b", "a"):
            wait_port(self.ports[node], self.procs[node], 60)
        self.fleet.start((0, self.group.phones))

    def measure(self) -> dict[str, Any]:
        assert self.fleet is not None
        bench, cs = self.bench, self.cs
        online, _ = self.fleet.wait_connected(self.group.phones, cs.connect_s)
        out: dict[str, Any] = {"bus": self.bus, "online": online,
                               "presence": presence(bench.dsn, self.group, cs.connect_s)}
        routes = {"same": self.ports["b"], "cross": self.ports["a"]}
        for route, port in routes.items():
            out[f"{route}_probe_s"] = probe(self.fleet, port, self.group.key, cs.probe_s)
        self.fleet.dump_frames(bench.workdir, "cluster-probe")  # forgotten
        # Both routes at once: one after the other on this shared machine,
        # the difference of the two p99s swung by ±100 ms with the load of
        # whatever else ran then.
        stalled = io_stalled_s()
        with ThreadPoolExecutor(len(routes)) as pool:
            runs = dict(zip(routes, pool.map(lambda route: bench.loadgen(
                f"load-cluster-{self.bus}-{route}", routes[route], "open", cs.conns,
                cs.seconds, rate=cs.rate, key=self.group.key), routes)))
        out["io_stalled_s"] = io_stalled_s() - stalled
        frames = self.fleet.dump_frames(bench.workdir, f"cluster-{self.bus}")
        for route, run in runs.items():
            _, drained = bench.drain(run, cs.drain_s)
            to_phone = sorted((frames[mid] - sent) / 1e6
                              for mid, sent in zip(run["ids"], run["t_send"]) if mid in frames)
            # The 201 read -> the frame read: for the cross route, the bus
            # and b's drain (its commit and the frame), a's own work left out.
            after = sorted((frames[mid] - answered) / 1e6 for mid, answered
                           in zip(run["ids"], run["t_answer"]) if mid in frames)
            out[route] = {**report.latency(run, frames), "p90_ms": report._rank(to_phone, 0.9),
                          "after_201_p50_ms": report._rank(after, 0.5),
                          "after_201_p99_ms": report._rank(after, 0.99),
                          "statuses": run["statuses"],
                          "answered_per_s": len(run["ids"]) / max(run["duration_s"], 1e-9),
                          "lag_p99_ms": run["lag_p99_ms"], "loadgen_cores": run["cores"],
                          "drained": drained}
        for q in ("p50", "p90"):
            out[f"{q}_diff_ms"] = out["cross"][f"{q}_ms"] - out["same"][f"{q}_ms"]
        out["p99_diff_ms"] = out["cross"]["p99_ms"] - out["same"]["p99_ms"]
        out["met"] = out["p99_diff_ms"] <= TARGET_MS
        return out

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.quit()
        nats = self.procs.pop("nats", None)
        end(list(self.procs.values()))
        if nats is not None:
            end([nats])
        self.procs.clear()


def probe(fleet: Fleet, port: int, key: str, timeout_s: float) -> float:
    """One send at a time through `port` until one is answered 201 and its
    frame reached a phone: the route works. The seconds that took."""
    started = time.monotonic()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10,
                      headers={"x-api-key": key, "content-type": "application/json"}) as http:
        def sent() -> bool:
            if http.post("/messages/send", content=BODY).status_code != 201:
                time.sleep(0.1)  # `a` does not count `b` live yet
                return False
            try:
                wait_for("a probe's frame",
                         lambda: sum(s["frames"] for s in fleet.stats()) > 0, 2.0)
            except RuntimeError:
                return False
            return True
        wait_for(f"a first frame through port {port}", sent, timeout_s)
    return time.monotonic() - started


@dataclass
class Workers:
    """`python -m broker serve --workers N` on one port, an account's phones
    holding their reports, the accept path's closed loop."""
    bench: Bench
    cs: ClusterSizes
    group: Group
    count: int
    tag: str
    port: int = field(default_factory=free_port)
    proc: Proc | None = None
    fleet: Fleet | None = None

    def nodes(self) -> set[str]:
        name = self.bench.env["SMSDORA_NODE"]
        return {name} if self.count == 1 else {f"{name}-{i}" for i in range(1, self.count + 1)}

    def start(self) -> None:
        self.proc = self.bench.procs.spawn(
            f"cluster-{self.tag}",
            ["-m", "broker", "serve", "--port", str(self.port), "--workers", str(self.count)],
            env={**self.bench.env, "SMSDORA_METRICS_ADDR": ""})
        self.fleet = Fleet(self.bench.procs, f"ws://127.0.0.1:{self.port}/devices/ws",
                           self.group.tokens, f"cluster-{self.tag}")

    def ready(self) -> None:
        assert self.proc is not None and self.fleet is not None
        wait_port(self.port, self.proc, 60)
        # A worker binds the port before it claims its node's lease: once
        # every lease is live, phones connecting meet every worker.
        wait_for(f"nodes {sorted(self.nodes())}",
                 lambda: self.nodes() <= live_nodes(self.bench.dsn), self.cs.connect_s)
        self.fleet.start((0, self.group.phones))

    def measure(self) -> dict[str, Any]:
        assert self.proc is not None and self.fleet is not None
        bench, sz = self.bench, self.bench.sz
        online, _ = self.fleet.wait_connected(self.group.phones, self.cs.connect_s)
        by_node = presence(bench.dsn, self.group, self.cs.connect_s)
        self.fleet.hold(True)
        c0, t0 = tree_cpu_s(self.proc.pid), time.monotonic()
        run = bench.loadgen(f"load-cluster-{self.tag}", self.port, "closed",
                            sz.closed_conns, sz.closed_s, key=self.group.key)
        cpu, wall = tree_cpu_s(self.proc.pid) - c0, time.monotonic() - t0
        frames = self.fleet.dump_frames(bench.workdir, f"cluster-{self.tag}")
        accepted = run["statuses"].get("201", 0)
        return {"workers": self.count, "online": online, "phones_by_node": by_node,
                "accept_per_s": report.answered_rate(run, sz.warmup_s, frames),
                "answered_per_s": report.answered_rate(run, sz.warmup_s),
                "statuses": run["statuses"], "frames": len(frames),
                "loadgen_cores": run["cores"], "broker_cpu_s": cpu, "wall_s": wall,
                "broker_cores": cpu / wall if wall > 0 else 0.0,
                "cpu_us_per_send": cpu / accepted * 1e6 if accepted else 0.0}

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.quit()
        if self.proc is not None:
            end([self.proc])


def phase(bench: Bench, quick: bool) -> dict[str, Any]:
    cs = sizes(quick)
    started = time.monotonic()
    groups = asyncio.run(seed(bench.dsn, bench.secret.encode(), bench.workdir, {
        "cross": (cs.phones, bench.sz.send_rate),
        **{f"accept-{i}": (cs.accept_phones, 0) for i in range(len(cs.worker_runs))}}))
    steps: dict[str, Pair | Workers] = {
        f"latency_{bus}": Pair(bench, cs, groups["cross"], bus) for bus in cs.buses}
    for i, count in enumerate(cs.worker_runs):
        steps[f"accept-{i}"] = Workers(bench, cs, groups[f"accept-{i}"], count, f"accept-{i}")
    out: dict[str, Any] = {}
    took: dict[str, float] = {}  # seconds of each step, and of starting (--quick: all)

    def timed(name: str, do: Callable[[], T]) -> T:
        t0 = time.monotonic()
        got = do()
        took[name] = took.get(name, 0.0) + time.monotonic() - t0
        return got

    try:
        for step in steps.values() if cs.together else ():
            timed("start", step.start)
        for step in steps.values() if cs.together else ():
            timed("start", step.ready)
        for name, step in steps.items():
            if not cs.together:
                timed(f"{name}_start", step.start)
                timed(f"{name}_start", step.ready)
            out[name] = timed(name, step.measure)
            if not cs.together:
                timed(f"{name}_stop", step.stop)
    finally:
        for step in steps.values():
            timed("stop", step.stop)
    accept = [out[f"accept-{i}"] for i in range(len(cs.worker_runs))]
    return {"sizes": asdict(cs), "send_rate": bench.sz.send_rate,
            "latency": {bus: out[f"latency_{bus}"] for bus in cs.buses},
            "workers": workers_figures(accept), "projection": projection(accept),
            "seconds": took, "elapsed_s": time.monotonic() - started}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def workers_figures(accept: list[dict[str, Any]]) -> dict[str, Any]:
    """Two workers ÷ the mean of the one-worker runs (before and after)."""
    one = _mean([r["accept_per_s"] for r in accept if r["workers"] == 1])
    two = _mean([r["accept_per_s"] for r in accept if r["workers"] == 2])
    ratio = two / one if one else 0.0
    return {"runs": accept, "one_per_s": one, "two_per_s": two, "ratio": ratio,
            "met": ratio >= 1.0}


def projection(accept: list[dict[str, Any]]) -> dict[str, Any]:
    """Broker CPU over the accepted sends, of the runs of each size."""
    def us(count: int) -> float:
        runs = [r for r in accept if r["workers"] == count]
        sends = sum(r["statuses"].get("201", 0) for r in runs)
        return sum(r["broker_cpu_s"] for r in runs) / sends * 1e6 if sends else 0.0
    one = us(1)
    return {"cpu_us_per_send": one, "sends_per_core_s": 1e6 / one if one else 0.0,
            "cpu_us_per_send_2": us(2)}


def _holds(ok: bool) -> str:
    return "yes" if ok else "**no**"


def rows(c: dict[str, Any] | None) -> list[tuple[str, str, str, str, str, str]]:
    """The table's rows, in bench/report.py's shape: per bus, cross-node
    against same-node latency; two workers against one; the projection."""
    if c is None:
        return []
    sz = c["sizes"]
    out = []
    for bus, lat in c["latency"].items():
        same, cross = lat["same"], lat["cross"]
        out.append((f"ms request → `send` frame p50 / p90 / p99, phone at node b, sent through "
                    f"node a (cross node, {bus} bus) against through b at the same time "
                    f"({sz['rate']:g}/s each for {sz['seconds']:g} s, {sz['phones']} phones "
                    f"answering; every task stalled on I/O {lat['io_stalled_s']:.2f} s of it)",
                    f"{cross['p50_ms']:.2f} / {cross['p90_ms']:.2f} / {cross['p99_ms']:.2f}",
                    f"{same['p50_ms']:.2f} / {same['p90_ms']:.2f} / {same['p99_ms']:.2f} "
                    "(same node)",
                    f"{lat['p99_diff_ms']:+.2f} ms (p99)", f"p99 ≤ same + {TARGET_MS:g} ms",
                    _holds(lat["met"])))
    w = c["workers"]
    two = next(r for r in w["runs"] if r["workers"] == 2)
    spread = " / ".join(str(n) for n in two["phones_by_node"].values())
    ones = " then ".join(f"{r['accept_per_s']:,.0f}" for r in w["runs"] if r["workers"] == 1)
    out.append((f"sends/s accept path through one port, `serve --workers 2` (phones holding "
                f"their reports, {sz['accept_phones']} phones, {spread} a worker)",
                f"{w['two_per_s']:,.0f}", f"{w['one_per_s']:,.0f} (`--workers 1`: {ones})",
                f"{w['ratio']:.2f}", "≥ 1.0 × one worker", _holds(w["met"])))
    p = c["projection"]
    out.append(("µs of broker CPU per accepted send (`--workers 1`, accept path) → "
                "sends/s per core", f"{p['cpu_us_per_send']:.0f} → "
                f"{p['sends_per_core_s']:,.0f}/s", f"{p['cpu_us_per_send_2']:.0f} µs "
                "(`--workers 2`)", "", "", ""))
    return out


def main(argv: list[str] | None = None) -> None:
    """The cross-node measure alone: a PostgreSQL of its own, one pair of
    nodes per bus, `--runs` open loops on it, one line each."""
    from bench.procs import raise_nofile
    from bench.run import Bench, say
    from bench.run import sizes as run_sizes

    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=main.__doc__)
    p.add_argument("--bus", action="append", choices=("postgres", "nats"),
                   help="postgres (default), nats, or both (given twice)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rate", type=float, default=50.0, help="sends a second, each route")
    p.add_argument("--phones", type=int, default=100)
    p.add_argument("--json", type=Path, help="write every run's figures here too")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the brokers (e.g. SMSDORA_POOL_MAX=40)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    args = p.parse_args(argv)
    cs = replace(sizes(False), phones=args.phones, rate=args.rate, seconds=args.seconds,
                 buses=tuple(args.bus or ("postgres",)))
    if "nats" in cs.buses and not NATS_SERVER.exists():
        raise SystemExit(f"bench.cluster: no {NATS_SERVER} (`make nats`)")
    workdir = Path(tempfile.mkdtemp(prefix="smsdora-bench-cluster-"))
    bench = Bench(workdir, run_sizes(False, raise_nofile()))
    results: dict[str, list[dict[str, Any]]] = {bus: [] for bus in cs.buses}
    try:
        bench.dsn = bench.pg.start()
        asyncio.run(database.create(bench.dsn))
        asyncio.run(database.seed(bench.dsn, bench.secret.encode(), 1, 1, 0))  # the plan
        bench.env = {**bench.server_env(), **dict(item.split("=", 1) for item in args.env)}
        group = asyncio.run(seed(bench.dsn, bench.secret.encode(), workdir,
                                 {"cross": (cs.phones, bench.sz.send_rate)}))["cross"]
        for bus in cs.buses:
            pair = Pair(bench, cs, group, bus)
            try:
                pair.start()
                pair.ready()
                for _ in range(args.runs):
                    results[bus].append(lat := pair.measure())
                    say(_line(lat))
            finally:
                pair.stop()
    finally:
        bench.close(keep=args.keep)
    if args.json is not None:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=1))


def _line(lat: dict[str, Any]) -> str:
    same, cross = lat["same"], lat["cross"]
    return (f"{lat['bus']}: same p50/p90/p99 {same['p50_ms']:.2f} / {same['p90_ms']:.2f} / "
            f"{same['p99_ms']:.2f} ms, cross {cross['p50_ms']:.2f} / {cross['p90_ms']:.2f} / "
            f"{cross['p99_ms']:.2f} ms: {lat['p50_diff_ms']:+.2f} / {lat['p99_diff_ms']:+.2f} "
            f"(p50 / p99); cross 201 -> frame p50 / p99 {cross['after_201_p50_ms']:.2f} / "
            f"{cross['after_201_p99_ms']:.2f} ms; I/O stalled {lat['io_stalled_s']:.2f} s")


if __name__ == "__main__":
    main()
