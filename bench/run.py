"""`python -m bench [--quick]`: the whole benchmark, one phase after another.

Real processes on loopback, each started here and ended in `finally`: an
embedded PostgreSQL in a temp dir, one server at a time (the baseline app,
the bare websockets server, the broker under bench/serve_with_gc.py), the
phones (bench/phones.py, one process per 5k; bench/sse_phones.py) and the
load generator (bench/loadgen.py). Every phase is bounded in time and count.

Phases: micro benchmarks in-process; baseline throughput; bare websockets
memory; in a broker of its own, a send to an SMS Gateway phone (SSE) against
one to a WebSocket phone at the same rate (bench/sse.py, bench/sse_phones.py);
in a broker of its own, the webhook sender's delivery rate and latency and
the accept path with and without an endpoint (bench/webhooks.py);
in a broker of its own, dashboard page render times for a 10,000-message
account (bench/dashboard.py);
in brokers of their own, a send through another node than its phone's and
one worker against two on one port (bench/cluster.py);
broker memory and idle CPU while phones connect (1k, 5k, 10k, 20k); with 10k
connected: the end-to-end maximum (a closed loop that keeps at most
`window` messages undelivered), open-loop latency at fractions of it, kill -9
and restart, and last the accept path's maximum (an unbounded closed loop,
which leaves unfinished reports behind it). The GC windows are the load runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench import cluster, dashboard, database, machine, micro, report, sse, webhooks
from bench.fleet import Fleet, slices
from bench.procs import (
    MainThread,
    Proc,
    Procs,
    cpu_s,
    free_port,
    idle_cores,
    raise_nofile,
    rss_kib,
    wait_port,
)

HERE = Path(__file__).resolve().parent
_T0 = time.monotonic()


def say(text: str) -> None:
    print(f"bench [{time.monotonic() - _T0:6.1f} s] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sizes:
    levels: tuple[int, ...]  # phones connected for the memory rows
    load_phones: int  # connected during the load runs and the restart
    per_account: int  # phones per account; the API key is account 0's
    send_rate: int  # every phone's send rate, SMS a minute (0: no limit)
    lifted: bool  # the broker's per-phone admission limits lifted (the smoke only)
    baseline_s: float
    closed_s: float
    warmup_s: float  # left out of the closed-loop rates
    open_s: float  # each open-loop run lasts open_s, or longer for open_samples (to open_max_s)
    open_samples: int
    open_max_s: float
    fractions: tuple[float, ...]  # of our maximum, for the open-loop runs
    closed_conns: int
    open_conns: int
    max_requests: int
    idle_cpu_s: float
    idle_cpu_from: int  # idle CPU is measured at levels from this many phones
    settle_s: float
    drain_s: float  # longest wait for the closed run's messages to be delivered
    drain_open_s: float  # the same after each open-loop run
    window: int  # lifecycle loop: most messages accepted and not yet delivered
    ramp_s: float  # longest wait for one level of phones
    reconnect_s: float
    png: bool


def sizes(quick: bool, fd_limit: int) -> Sizes:
    if quick:
        # 50 phones at 30 a minute carry only 25 sends a second: the smoke
        # lifts the phones' limits (send rate, in-flight window, frame rate).
        return Sizes(levels=(50,), load_phones=50, per_account=50, send_rate=0, lifted=True,
                     baseline_s=1.0, closed_s=1.0,
                     warmup_s=0.1, open_s=1.0, open_samples=0, open_max_s=1.0,
                     fractions=(0.5, 0.9), closed_conns=8,
                     open_conns=16, max_requests=300, idle_cpu_s=0.5, idle_cpu_from=50,
                     settle_s=0.2, drain_s=10, drain_open_s=5, window=64, ramp_s=20, reconnect_s=20,
                     png=False)
    # One broker process holds every phone's socket: the fd limit caps the top level.
    top = min(20_000, fd_limit - 300)
    # Idle CPU over one heartbeat period (20 s): each socket is pinged once in
    # it, whenever it connected, so both servers are measured over a whole cycle.
    # The load account holds the 10k phones of the load runs, each at the
    # default rate of 30 SMS a minute (Android's own limit): 5,000 a second
    # together. The other phones are a second account's.
    return Sizes(levels=(1000, 5000, 10_000, top), load_phones=10_000, per_account=10_000,
                 send_rate=30, lifted=False,
                 baseline_s=8, closed_s=8, warmup_s=1, open_s=5, open_samples=2000,
                 open_max_s=15,
                 fractions=(0.25, 0.5, 0.75, 0.9), closed_conns=64, open_conns=64,
                 max_requests=10**9, idle_cpu_s=20, idle_cpu_from=top, settle_s=1.0,
                 drain_s=20, drain_open_s=8, window=256, ramp_s=60, reconnect_s=45, png=True)


class Bench:
    def __init__(self, workdir: Path, sz: Sizes) -> None:
        self.workdir = workdir
        self.sz = sz
        self.procs = Procs(workdir)
        self.pg = database.Postgres(workdir / "pg")
        self.secret = secrets.token_hex(32)
        self.dsn = ""
        self.key = ""
        self.tokens_file = workdir / "tokens.json"
        self.env: dict[str, str] = {}
        self.loadgen_args: list[str] = []  # for every load generator (bench.profile --keyed)
        self.broker_starts = 0

    # --- processes ----------------------------------------------------------

    def close(self, keep: bool) -> None:
        """Every process of the run stopped, and its work dir gone unless `keep`."""
        self.procs.close()
        self.pg.stop()
        if keep:
            say(f"work dir kept: {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SMSDORA_", "BENCH_")) and k != "DATABASE_URL"}
        env.update({
            "DATABASE_URL": self.dsn, "SMSDORA_SECRET": self.secret,
            "SMSDORA_HOME": str(self.workdir / "home"), "SMSDORA_NODE": "bench",
            "SMSDORA_LOG_LEVEL": "WARNING",
            # Every admission limit (in-flight window, frame rate and burst,
            # queue cap) at its default: the broker as it ships. But the
            # phones come from a handful of loopback addresses, 5,000 each,
            # past the cap per client address meant for an exposed broker.
            "SMSDORA_MAX_CONNECTIONS_PER_ADDRESS": "0",
            # And one account carries the whole load, where the request
            # budget of an account (2,000 a second after a burst of 5,000,
            # a fairness policy between accounts) would be measured instead
            # of the broker: until this, it refused 3,257 of a 6 s closed
            # loop's 19,853 requests with 429 (docs/PERFORMANCE.md).
            "SMSDORA_ACCOUNT_RATE": "0",
        })
        if os.environ.get("BENCH_GC_PROBE"):  # a diagnosis (bench/serve_with_gc.py)
            env["BENCH_GC_PROBE"] = os.environ["BENCH_GC_PROBE"]
        if self.sz.lifted:
            env.update({"SMSDORA_INFLIGHT_WINDOW": "0", "SMSDORA_FRAME_RATE": "1000000",
                        "SMSDORA_FRAME_BURST": "1000000"})
        return env

    def start_broker(self, port: int, extra_env: dict[str, str] | None = None
                     ) -> tuple[Proc, Path]:
        self.broker_starts += 1
        gc_file = self.workdir / f"gc-{self.broker_starts}.json"
        env = {**self.env, **(extra_env or {}), "BENCH_GC_FILE": str(gc_file)}
        proc = self.procs.spawn(f"broker-{self.broker_starts}",
                                ["-m", "bench.serve_with_gc", "--port", str(port)], env=env)
        return proc, gc_file

    def loadgen(self, name: str, port: int, mode: str, conns: int, duration: float,
                rate: float = 0.0, key: str = "", extra: list[str] | None = None
                ) -> dict[str, Any]:
        out = self.workdir / f"{name}.json"
        proc = self.procs.spawn(name, [
            "-m", "bench.loadgen", "--port", str(port), "--key", key, "--mode", mode,
            "--conns", str(conns), "--duration", str(duration), "--rate", str(rate),
            "--max-requests", str(self.sz.max_requests), "--out", str(out), *(extra or []),
            *self.loadgen_args])
        code = proc.popen.wait(duration + 60)  # past that: TimeoutExpired, and main's clean-up
        if code != 0:
            raise RuntimeError(f"{name} failed ({code})\n{proc.tail()}")
        result: dict[str, Any] = msgspec.json.decode(out.read_bytes())
        out.unlink()
        return result

    def drain(self, run: dict[str, Any], limit_s: float) -> tuple[database.Lifecycle, bool]:
        """Wait (at most `limit_s`) until every message of the run is final."""
        deadline = time.monotonic() + limit_s
        while True:
            life = asyncio.run(database.lifecycle(self.dsn, run["t0_ns"] - 50_000_000,
                                                  run["t1_ns"] + 50_000_000))
            if life.open == 0 or time.monotonic() > deadline:
                return life, life.open == 0
            time.sleep(0.25)

    # --- phases -------------------------------------------------------------

    def setup(self) -> str:
        self.dsn = self.pg.start()
        pg_version = asyncio.run(database.create(self.dsn))
        seeded = asyncio.run(database.seed(self.dsn, self.secret.encode(), max(self.sz.levels),
                                           self.sz.per_account, self.sz.send_rate))
        self.key = seeded.key
        self.tokens_file.write_bytes(msgspec.json.encode(seeded.tokens))
        self.env = self.server_env()
        return pg_version

    def baseline(self) -> dict[str, Any]:
        port = free_port()
        proc = self.procs.spawn("baseline", ["-m", "bench.baseline_app", "--port", str(port)],
                                env=self.env)
        wait_port(port, proc, 30)
        try:
            c0, t0, thread = cpu_s(proc.pid), time.monotonic(), MainThread(proc.pid)
            run = self.loadgen("load-baseline", port, "closed", self.sz.closed_conns,
                               self.sz.baseline_s)
            # Its server's CPU, beside the rate: what one request costs it.
            server_cores = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0)
            main_thread = thread.shares()
        finally:
            proc.stop()
        return {"per_s": report.answered_rate(run, self.sz.warmup_s),
                "server_cores": server_cores, "main_thread": main_thread,
                "loadgen_cores": run["cores"],
                "statuses": run["statuses"], "sent": run["sent"]}

    def ramp(self, fleet: Fleet, pid: int) -> dict[str, Any]:
        """Connect the phones level by level; RSS and idle CPU at each."""
        time.sleep(self.sz.settle_s)
        rss0 = rss_kib(pid)
        parts = slices(self.sz.levels)
        rows = []
        for level in self.sz.levels:
            for part in parts[len(fleet.running):]:
                if part[0] < level:
                    fleet.start(part)
            got, took = fleet.wait_connected(level, self.sz.ramp_s)
            time.sleep(self.sz.settle_s)
            rss = rss_kib(pid)
            row: dict[str, Any] = {"phones": level, "connected": got, "connect_s": took,
                                   "rss_kib": rss, "kib_per_phone": (rss - rss0) / max(got, 1)}
            if level >= self.sz.idle_cpu_from:
                row["idle_cores"] = idle_cores(pid, self.sz.idle_cpu_s)
            rows.append(row)
            say(f"{fleet.name}: {got}/{level} phones in {took:.1f} s, "
                f"{row['kib_per_phone']:.1f} KiB each"
                + (f", idle {row['idle_cores']:.3f} cores" if "idle_cores" in row else ""))
        return {"rss0_kib": rss0, "levels": rows}

    def bare(self) -> dict[str, Any]:
        port = free_port()
        proc = self.procs.spawn("bare_ws", ["-m", "bench.bare_ws", "--port", str(port)])
        wait_port(port, proc, 30)
        fleet = Fleet(self.procs, f"ws://127.0.0.1:{port}/devices/ws", self.tokens_file, "bare")
        try:
            return self.ramp(fleet, proc.pid)
        finally:
            fleet.quit()
            proc.stop()

    def sse_phase(self, quick: bool) -> dict[str, Any]:
        """A send to an SMS Gateway phone (SSE) against one to a WebSocket
        phone at the same rate (bench/sse.py), in a broker of their own."""
        row = sse.phase(self, quick)
        ws, ss = row["ws"], row["sse"]
        say(f"SSE phase at {row['rate']:.0f}/s, {row['phones']} phones a side: WebSocket frame "
            f"p50 {ws['p50_ms']:.2f} / p99 {ws['p99_ms']:.2f} ms; SSE event p50 "
            f"{ss['event']['p50_ms']:.2f} / p99 {ss['event']['p99_ms']:.2f} ms, listed p50 "
            f"{ss['listed']['p50_ms']:.2f} / p99 {ss['listed']['p99_ms']:.2f} ms "
            f"({row['elapsed_s']:.0f} s)")
        return row

    def webhooks_phase(self, quick: bool) -> dict[str, Any]:
        """The outbox sender's delivery rate and latency, and what the
        outbox costs the accept path (bench/webhooks.py), in a broker of
        their own."""
        row = webhooks.phase(self, quick)
        one, four, sent, acc = (row["prefilled_1"], row[f"prefilled_{webhooks.ENDPOINTS}"],
                                row["from_sends"], row["accept"])
        say(f"webhooks: from a full outbox {one['per_s']:.0f} events/s to one endpoint, "
            f"{four['per_s']:.0f} to {webhooks.ENDPOINTS}; from sends at {sent['offered_per_s']:g}/s "
            f"written -> received p50 {sent['latency']['p50_ms']:.2f} / p99 "
            f"{sent['latency']['p99_ms']:.2f} ms; accept path "
            f"{acc['plain-1']['accept_per_s']:.0f} / {acc['hooked']['accept_per_s']:.0f} / "
            f"{acc['plain-2']['accept_per_s']:.0f} /s without / with / without an endpoint "
            f"(ratio {acc['ratio']:.2f}; {row['elapsed_s']:.0f} s)")
        return row

    def dashboard_phase(self, quick: bool) -> dict[str, Any]:
        """Dashboard pages for a 10,000-message account (bench/dashboard.py),
        in a broker of their own."""
        row = dashboard.phase(self, quick)
        say("dashboard: " + "; ".join(
            f"{name} p50 {row[name]['p50_ms']:.2f} / p99 {row[name]['p99_ms']:.2f} ms"
            for name in ("list", "list_failed", "list_oldest", "detail"))
            + f" ({row['elapsed_s']:.0f} s)")
        return row

    def cluster_phase(self, quick: bool) -> dict[str, Any]:
        """Cross-node latency on each bus, one worker against two, and the
        CPU per send (bench/cluster.py), in brokers of their own."""
        row = cluster.phase(self, quick)
        for bus, lat in row["latency"].items():
            say(f"cluster, {bus} bus: request -> frame p99 {lat['same']['p99_ms']:.2f} ms "
                f"same node, {lat['cross']['p99_ms']:.2f} ms cross node "
                f"({lat['p99_diff_ms']:+.2f} ms)")
        w, p = row["workers"], row["projection"]
        say("cluster: accept path " + ", ".join(
            f"{r['accept_per_s']:.0f}/s with {r['workers']} ({r['phones_by_node']})"
            for r in w["runs"]) + f" (ratio {w['ratio']:.2f}); {p['cpu_us_per_send']:.0f} µs "
            f"of broker CPU a send, {p['sends_per_core_s']:.0f}/s per core "
            f"({row['elapsed_s']:.0f} s)")
        return row

    def lifecycle(self, fleet: Fleet, port: int, pid: int) -> dict[str, Any]:
        """The end-to-end maximum: closed loop, at most `window` messages
        accepted and not yet delivered; delivered rows stored a second."""
        extra = ["--window", str(self.sz.window)]
        for path in fleet.counters():
            extra += ["--counter", str(path)]
        thread = MainThread(pid)
        run = self.loadgen("load-lifecycle", port, "lifecycle", self.sz.closed_conns,
                           self.sz.closed_s, key=self.key, extra=extra)
        main_thread = thread.shares()
        frames = fleet.dump_frames(self.workdir, "lifecycle")
        life, drained = self.drain(run, self.sz.drain_s)
        lo = run["t0_ns"] + int(self.sz.warmup_s * 1e9)
        delivered = asyncio.run(database.delivered_between(self.dsn, lo, run["t1_ns"]))
        return {"e2e_per_s": delivered / ((run["t1_ns"] - lo) / 1e9), "gc": self.gc_during(run),
                "main_thread": main_thread,
                "loadgen_cores": run["cores"],
                "window": self.sz.window, "answered_per_s": report.answered_rate(
                    run, self.sz.warmup_s), "statuses": run["statuses"],
                "created": life.messages, "delivered": life.delivered, "drained": drained,
                "frames": len(frames), "latency": report.latency(run, frames)}

    def closed(self, fleet: Fleet, port: int, hold: bool, pid: int) -> dict[str, Any]:
        """The accept path's maximum: closed loop; `hold`: the phones take
        their jobs but report nothing (the accept path alone), else they
        answer as ever (the accept path while every report is written too)."""
        tag = "closed-held" if hold else "closed"
        fleet.hold(hold)
        thread = MainThread(pid)
        try:
            run = self.loadgen(f"load-{tag}", port, "closed", self.sz.closed_conns,
                               self.sz.closed_s, key=self.key)
        finally:
            fleet.hold(False)
        main_thread = thread.shares()
        frames = fleet.dump_frames(self.workdir, tag)
        return {"accept_per_s": report.answered_rate(run, self.sz.warmup_s, frames),
                "gc": self.gc_during(run), "main_thread": main_thread, "loadgen_cores": run["cores"],
                "answered_per_s": report.answered_rate(run, self.sz.warmup_s),
                "statuses": run["statuses"], "frames": len(frames), "t0_ns": run["t0_ns"],
                "t1_ns": run["t1_ns"], "latency": report.latency(run, frames)}

    def open(self, fleet: Fleet, port: int, maximum: float) -> list[dict[str, Any]]:
        rows = []
        for fraction in self.sz.fractions:
            rate = max(1.0, fraction * maximum)
            # Enough samples that p99.9 is not just the largest one.
            seconds = min(self.sz.open_max_s, max(self.sz.open_s, self.sz.open_samples / rate))
            run = self.loadgen(f"load-open-{int(fraction * 100)}", port, "open",
                               self.sz.open_conns, seconds, rate=rate, key=self.key)
            frames = fleet.dump_frames(self.workdir, f"open{int(fraction * 100)}")
            _, drained = self.drain(run, self.sz.drain_open_s)
            row = {"fraction": fraction, "offered_per_s": rate, "seconds": seconds,
                   "gc": self.gc_during(run),
                   "answered_per_s": len(run["ids"]) / max(run["duration_s"], 1e-9),
                   "statuses": run["statuses"], "lag_p99_ms": run["lag_p99_ms"],
                   "conns": run["conns"],
                   "drained": drained, **report.latency(run, frames)}
            rows.append(row)
            say(f"open loop at {rate:.0f}/s: p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, p99.9 {row['p999_ms']:.2f} ms")
        return rows

    def gc_during(self, run: dict[str, Any]) -> dict[str, Any]:
        """The broker's longest GC pause inside one load run."""
        time.sleep(0.6)  # the GC file is written every 0.5 s
        return report.gc_window(self.workdir / f"gc-{self.broker_starts}.json",
                                run["t0_ns"] / 1e9, run["t1_ns"] / 1e9)

    def restart(self, fleet: Fleet, broker: Proc, port: int) -> tuple[dict[str, Any], Proc]:
        n = fleet.connected()
        t_kill = time.time_ns()
        broker.kill9()
        proc, _ = self.start_broker(port)
        t_listen = int(wait_port(port, proc, 60) * 1e9)
        deadline = time.monotonic() + self.sz.reconnect_s
        while True:
            stats = fleet.stats(since_ns=t_kill)
            back = sum(s["welcomed_since"] for s in stats)
            if back >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        last = max(s["last_welcome_ns"] for s in stats)
        after_listen: dict[str, int] = {}
        for s in fleet.stats(since_ns=t_listen):
            for kind, count in s["failures_since"].items():
                after_listen[kind] = after_listen.get(kind, 0) + count
        during: dict[str, int] = {}
        for s in stats:
            for kind, count in s["failures_since"].items():
                during[kind] = during.get(kind, 0) + count
        refused = sum(c for k, c in after_listen.items() if k.startswith("http_"))
        return {"phones": n, "reconnected": back, "seconds": (last - t_kill) / 1e9 if last else 0,
                "broker_start_s": (t_listen - t_kill) / 1e9,
                "seconds_after_listen": (last - t_listen) / 1e9 if last else 0,
                "refused": refused, "failed_after_listen": sum(after_listen.values()) - refused,
                "failures_after_listen": after_listen, "failures_since_kill": during}, proc

    def broker(self) -> dict[str, Any]:
        port = free_port()
        proc, gc_file = self.start_broker(port)
        wait_port(port, proc, 60)
        fleet = Fleet(self.procs, f"ws://127.0.0.1:{port}/devices/ws", self.tokens_file,
                      "broker")
        try:
            memory = self.ramp(fleet, proc.pid)
            fleet.quit(keep=self.sz.load_phones)
            got, _ = fleet.wait_connected(self.sz.load_phones, self.sz.ramp_s)
            say(f"{got} phones connected for the load runs")
            t_load0 = time.time()
            lifecycle = self.lifecycle(fleet, port, proc.pid)
            say(f"lifecycle loop: {lifecycle['e2e_per_s']:.0f}/s delivered end to end")
            latency = self.open(fleet, port, lifecycle["e2e_per_s"])
            time.sleep(1.0)  # the GC file is written every 0.5 s
            gc_windows = [report.gc_window(gc_file, t_load0, time.time())]
            phones = report.fleet_summary(fleet.stats())
            reconnect, proc = self.restart(fleet, proc, port)
            say(f"restart: {reconnect['reconnected']}/{reconnect['phones']} back in "
                f"{reconnect['seconds']:.1f} s, {reconnect['refused']} refused")
            # Last: past the end-to-end maximum the reports pile up unfinished,
            # and nothing after this run may inherit that backlog.
            t_closed = time.time()
            dropped = report.fleet_summary(fleet.stats())["counts"].get("dropped", 0)
            closed = self.closed(fleet, port, hold=True, pid=proc.pid)
            say(f"closed loop, phones holding their reports: {closed['accept_per_s']:.0f}/s "
                "accepted (frame at phone)")
            answering = self.closed(fleet, port, hold=False, pid=proc.pid)
            closed["answering"] = answering
            closed["dropped"] = (report.fleet_summary(fleet.stats())["counts"].get("dropped", 0)
                                 - dropped)
            say(f"closed loop, phones answering: {answering['accept_per_s']:.0f}/s accepted")
            time.sleep(1.0)
            gc_windows.append(report.gc_window(self.workdir / f"gc-{self.broker_starts}.json",
                                               t_closed, time.time()))
            gc_row = dict(max(gc_windows, key=lambda g: float(g["longest_ms"])))
            gc_row["windows"] = gc_windows
            for key in ("longest_ms_whole_run", "generation_whole_run"):
                gc_row[key] = gc_windows[0][key]  # the first broker: every phone connecting
            gc_row["phones"] = got
            return {"memory": memory, "lifecycle": lifecycle, "throughput": closed,
                    "latency": latency, "gc": gc_row, "reconnect": reconnect,
                    "load_phones": got, "phones": phones}
        finally:
            fleet.quit()
            proc.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the tiny smoke run (seconds)")
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    p.add_argument("--png", type=Path, default=HERE / "latency.png")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    args = p.parse_args(argv)
    # SIGTERM (a test's timeout, an impatient operator) unwinds through the
    # `finally` below, which ends every process and the embedded PostgreSQL.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    load_before = os.getloadavg()
    fd_limit = raise_nofile()
    sz = sizes(args.quick, fd_limit)
    workdir = Path(tempfile.mkdtemp(prefix="smsdora-bench-"))
    bench = Bench(workdir, sz)
    started = time.monotonic()
    say(f"work dir {workdir}; load average {load_before[0]:.2f}")
    try:
        rows: dict[str, Any] = {"micro": micro.run(10_000 if not args.quick else 1000,
                                                   args.quick)}
        pg_version = bench.setup()
        say(f"PostgreSQL {pg_version} up, {max(sz.levels)} devices seeded")
        rows["baseline"] = bench.baseline()
        say(f"baseline: {rows['baseline']['per_s']:.0f}/s")
        rows["bare"] = bench.bare()
        rows["sse"] = bench.sse_phase(args.quick)
        rows["webhooks"] = bench.webhooks_phase(args.quick)
        rows["dashboard"] = bench.dashboard_phase(args.quick)
        rows["cluster"] = bench.cluster_phase(args.quick)
        rows.update(bench.broker())
    finally:
        bench.close(keep=args.keep)
    results = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick, "elapsed_s": time.monotonic() - started,
        "load_before": load_before, "load_after": os.getloadavg(),
        "machine": machine.describe(pg_version, fd_limit), "sizes": asdict(sz),
        "settings": {k: v for k, v in bench.env.items() if k.startswith("SMSDORA_")
                     and k != "SMSDORA_SECRET" and k != "SMSDORA_HOME"},
        "rows": rows,
    }
    results["table"] = report.table(results)
    results["table"] += "".join("\n| " + " | ".join(row) + " |"
                                for row in cluster.rows(rows.get("cluster")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=1))
    print(results["table"])
    if sz.png and str(args.png):
        report.chart(results, args.png)
    say(f"done in {results['elapsed_s']:.0f} s; results in {args.out}")
