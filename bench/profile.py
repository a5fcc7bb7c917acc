"""`python -m bench.profile`: where the broker's time goes, under load.

Not part of `make bench`: a tool for the one optimising. It starts the same
processes as the benchmark (embedded PostgreSQL, the broker, phones, the
load generator), with fewer phones, and records the broker with `py-spy`
(the `bench` extra installs it) during each load run; then prints the functions
that own the most samples, by self time and by total time.

    python -m bench.profile --phones 2000 --seconds 8 closed lifecycle
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench import report
from bench.fleet import Fleet, slices
from bench.procs import cpu_s, free_port, wait_port
from bench.report import thread_shares
from bench.run import Bench, Sizes, say


def _sizes(phones: int, seconds: float, send_rate: int) -> Sizes:
    return Sizes(levels=(phones,), load_phones=phones, per_account=phones, send_rate=send_rate,
                 lifted=False, baseline_s=seconds, closed_s=seconds, warmup_s=1, open_s=5,
                 open_samples=0, open_max_s=5, fractions=(), closed_conns=64, open_conns=64,
                 max_requests=10**9, idle_cpu_s=1, idle_cpu_from=10**9, settle_s=0.5,
                 drain_s=20, drain_open_s=8, window=256, ramp_s=60, reconnect_s=45, png=False)


def _role(pid: str) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    for role in ("serve_with_gc", "bench.phones", "bench.loadgen", "postgres"):
        if role in cmd:
            return role
    return None


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) of every live process of the run, by role."""
    out: dict[str, float] = collections.defaultdict(float)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        role = _role(entry.name)
        if role is None:
            continue
        try:
            out[role] += cpu_s(int(entry.name))
        except OSError:
            continue  # ended meanwhile
    return out


def machine_ticks() -> list[int]:
    """/proc/stat's cpu line: user nice system idle iowait irq softirq steal."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def summarize(raw: Path, top: int) -> str:
    """py-spy's collapsed stacks ("a;b;c N") as self and total shares."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                  for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count
    out = [f"{samples} samples", "self:"]
    out += [f"  {100 * c / samples:5.1f} %  {f}" for f, c in own.most_common(top)]
    out.append("total:")
    out += [f"  {100 * c / samples:5.1f} %  {f}" for f, c in total.most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", choices=("connect", "baseline", "closed", "answering",
                                          "lifecycle", "churn", "garbage", "idle", "open",
                                          "open-held"),
                   help="connect: while the phones connect (first, whatever the order)")
    p.add_argument("--phones", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0, help="open: requests a second")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--send-rate", type=int, default=30)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=None, help="keep the raw stacks here")
    p.add_argument("--native", action="store_true", help="py-spy --native: C frames too")
    p.add_argument("--pg", action="append", default=[], metavar="NAME=VALUE",
                   help="ALTER DATABASE ... SET for the bench database (a diagnosis)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the broker (e.g. SMSDORA_POOL_MAX=40)")
    p.add_argument("--keyed", action="store_true",
                   help="every request with an Idempotency-Key of its own (the baseline ignores it)")
    args = p.parse_args()
    spy_bin = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy_bin is None:
        sys.exit("py-spy not found: pip install -e '.[bench]'")
    workdir = Path(tempfile.mkdtemp(prefix="smsdora-profile-"))
    bench = Bench(workdir, _sizes(args.phones, args.seconds, args.send_rate))
    try:
        bench.setup()
        bench.env.update(item.split("=", 1) for item in args.env)
        if args.keyed:
            bench.loadgen_args = ["--keyed"]
        if args.pg:
            import asyncio

            import asyncpg

            async def alter() -> None:
                db = await asyncpg.connect(bench.dsn)
                try:
                    for item in args.pg:
                        name, value = item.split("=", 1)
                        await db.execute(f"ALTER DATABASE {db._params.database} SET {name} = '{value}'")
                finally:
                    await db.close()
            asyncio.run(alter())
        port = free_port()
        proc, gc_file = bench.start_broker(port)
        wait_port(port, proc, 60)
        fleet = Fleet(bench.procs, f"ws://127.0.0.1:{port}/devices/ws", bench.tokens_file,
                      "broker")
        def spy(name: str) -> tuple[subprocess.Popen[bytes], Path]:
            raw = (args.out or workdir) / f"{name}.txt"
            return subprocess.Popen(
                [spy_bin, "record", "--pid", str(proc.pid), "--rate", "200", "--format", "raw",
                 "--duration", str(int(args.seconds)), "--output", str(raw), "--nonblocking",
                 *(["--native"] if args.native else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), raw

        if "connect" in args.runs:
            recorder, raw = spy("connect")
        for part in slices((args.phones,)):
            fleet.start(part)
        got, took = fleet.wait_connected(args.phones, 60)
        say(f"{got} phones in {took:.1f} s")
        if "connect" in args.runs:
            recorder.wait(timeout=args.seconds + 30)
            print(f"--- connect\n{summarize(raw, args.top)}", flush=True)
        for name in args.runs:
            if name == "connect":
                continue
            if name == "idle":
                recorder, raw = spy(name)
                cpu0, t0 = cpu_by_role(), time.monotonic()
                time.sleep(20)
                cpu1, t1 = cpu_by_role(), time.monotonic()
                recorder.wait(timeout=args.seconds + 30)
                print(f"--- idle: broker {(cpu1['serve_with_gc'] - cpu0['serve_with_gc']) / (t1 - t0):.3f}"
                      f" cores over 20 s\n{summarize(raw, args.top)}", flush=True)
                continue
            if name in ("churn", "garbage"):
                # churn: half the phones leave first. Then one full collection,
                # keeping what only the cyclic collector could free, by type.
                if name == "churn":
                    fleet.quit(keep=args.phones // 2)
                    time.sleep(3)
                garbage = Path(f"{gc_file}.garbage")
                garbage.unlink(missing_ok=True)
                os.kill(proc.pid, signal.SIGUSR2)
                while not garbage.exists():
                    time.sleep(0.2)
                time.sleep(0.5)
                counts = msgspec.json.decode(garbage.read_bytes())
                print(f"--- {name}: {sum(counts.values())} objects in cycles")
                for kind, n in list(counts.items())[:25]:
                    print(f"  {n:8d}  {kind}")
                continue
            recorder, raw = spy(name)
            cpu0, t0, m0 = cpu_by_role(), time.monotonic(), machine_ticks()
            if name in ("open", "open-held"):
                fleet.hold(name == "open-held")
                try:
                    run = bench.loadgen(f"load-{name}", port, "open", 64, args.seconds,
                                        rate=args.rate, key=bench.key)
                finally:
                    fleet.hold(False)
                lat = report.latency(run, fleet.dump_frames(workdir, name))
                result = {"loadgen_cores": run["cores"]}
                say(f"{name} at {args.rate:.0f}/s: to phone p50 {lat['p50_ms']:.2f} p99 "
                    f"{lat['p99_ms']:.2f} p99.9 {lat['p999_ms']:.2f} ms; 201 p50 "
                    f"{lat['http_p50_ms']:.2f} p99 {lat['http_p99_ms']:.2f} ms")
            elif name == "baseline":
                result = bench.baseline()
                say(f"baseline: {result['per_s']:.0f}/s, its server {result['server_cores']:.2f} "
                    f"cores: {1e6 * result['server_cores'] / result['per_s']:.0f} µs a request; its "
                    f"main thread running / runnable / asleep {thread_shares(result['main_thread'])}")
            elif name in ("closed", "answering"):
                result = bench.closed(fleet, port, hold=name == "closed", pid=proc.pid)
                say(f"{name}: {result['accept_per_s']:.0f}/s accepted (frame at phone)")
            else:
                result = bench.lifecycle(fleet, port, proc.pid)
                say(f"lifecycle: {result['e2e_per_s']:.0f}/s delivered")
            cpu1, t1, m1 = cpu_by_role(), time.monotonic(), machine_ticks()
            d = [b - a for a, b in zip(m0, m1)]
            tick = os.sysconf("SC_CLK_TCK") * (t1 - t0)
            os.kill(proc.pid, signal.SIGUSR1)  # the GC file, now
            time.sleep(0.2)
            gc_row = report.gc_window(gc_file, time.time() - (t1 - t0), time.time())
            recorder.wait(timeout=args.seconds + 30)
            time.sleep(0.5)
            shares = ", ".join(f"{role} {(cpu1[role] - cpu0.get(role, 0.0)) / (t1 - t0):.2f}"
                               for role in sorted(cpu1))
            shares += (f", bench.loadgen {result['loadgen_cores']:.2f}; machine: user "
                       f"{(d[0] + d[1]) / tick:.2f}, system {d[2] / tick:.2f}, softirq "
                       f"{d[6] / tick:.2f}, idle {d[3] / tick:.2f} cores")
            if result.get("main_thread"):
                shares += f"; broker main thread running / runnable / asleep {thread_shares(result['main_thread'])}"
            print(f"--- {name}\ncores busy by process: {shares}\n"
                  f"longest GC pause: {gc_row['longest_ms']:.1f} ms wall, "
                  f"{gc_row['longest_cpu_ms']:.1f} ms CPU, gen {gc_row['generation']}; "
                  f"collections so far {gc_row['collections']}, ms {gc_row['total_ms']}\n"
                  f"{summarize(raw, args.top)}", flush=True)
    finally:
        bench.close(keep=args.out is not None)


if __name__ == "__main__":
    main()
