"""The cluster bus (broker/cluster/) on loopback, both implementations in one
run: `python -m bench.bus [--quick]`. Not part of `make bench` (yet): its
figures are in docs/PERFORMANCE.md, "The cluster bus".

Two bus instances in this process stand for two nodes, as in
tests/broker/test_cluster_bus.py: an embedded PostgreSQL in a temp dir (as
`make bench` starts its own) and Debian's nats-server on a free port.

- **throughput**: `--messages` ids of ~40 bytes published from node a to
  node b in bursts of `--burst` per loop turn, as fast as the publisher
  goes; msgs/s from the first publish to the last arrival.
- **one at a time**: a message published only once the previous one
  arrived: the round trip a cross-node wake-up adds (p50 / p99, ms).
- **postgres, unbatched**: what the batching buys: the same throughput run
  with one `SELECT pg_notify($1, $2)` a message, 8 at once on the pool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.database import Postgres
from broker import store
from broker.cluster.bus import Bus
from broker.cluster.nats_bus import NatsBus
from broker.cluster.pg_bus import PgBus
from broker.store.listener import Listener


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nats() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench.bus: nats-server did not start (`make nats`)") from None
            time.sleep(0.01)


async def throughput(a: Bus, b: Bus, messages: int, burst: int) -> float:
    got = 0
    done = asyncio.Event()

    def on_message(_payload: bytes) -> None:
        nonlocal got
        got += 1
        if got == messages:
            done.set()

    await b.subscribe("bench.throughput", on_message)
    payloads = [f"{uuid.uuid4()} {i}".encode() for i in range(messages)]
    started = time.perf_counter()
    for i in range(0, messages, burst):
        for payload in payloads[i:i + burst]:
            a.publish("bench.throughput", payload)
        await asyncio.sleep(0)  # the next loop turn: the burst goes out
    await asyncio.wait_for(done.wait(), 120)
    return messages / (time.perf_counter() - started)


async def round_trips(a: Bus, b: Bus, count: int) -> list[float]:
    arrived = asyncio.Event()
    await b.subscribe("bench.one", lambda _p: arrived.set())
    out = []
    for i in range(count):
        arrived.clear()
        started = time.perf_counter()
        a.publish("bench.one", f"{i}".encode())
        await asyncio.wait_for(arrived.wait(), 10)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def unbatched(dsn: str, messages: int) -> dict[str, Any]:
    """One NOTIFY statement a message, `CONCURRENCY` statements under way."""
    concurrency = 8
    pool = await store.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    got = 0
    done = asyncio.Event()

    def on_message(_payload: str) -> None:
        nonlocal got
        got += 1
        if got == messages:
            done.set()

    listener = Listener(dsn, {"smsdora.bench.unbatched": on_message})
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        payloads = [f"{uuid.uuid4()} {i}" for i in range(messages)]

        async def worker(k: int) -> None:
            for payload in payloads[k::concurrency]:
                await pool.execute("SELECT pg_notify($1, $2)", "smsdora.bench.unbatched", payload)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        await asyncio.wait_for(done.wait(), 120)
        return {"msgs_per_s": round(messages / (time.perf_counter() - started)),
                "notify_statements": messages}
    finally:
        await listener.stop()
        await pool.close()


async def measure(make: Any, messages: int, burst: int, count: int) -> dict[str, Any]:
    a, b, close = await make()
    try:
        await asyncio.wait_for(asyncio.gather(a.connected.wait(), b.connected.wait()), 10)
        rate = await throughput(a, b, messages, burst)
        rtt = sorted(await round_trips(a, b, count))
        result = {"msgs_per_s": round(rate), "rtt_p50_ms": round(statistics.median(rtt), 3),
                  "rtt_p99_ms": round(rtt[int(len(rtt) * 0.99) - 1], 3), "dropped": a.dropped}
        if isinstance(a, PgBus):
            result["notify_statements"] = a.statements
        return result
    finally:
        await close()


async def run(dsn: str, nats_url: str, messages: int, burst: int, count: int) -> dict[str, Any]:
    async def postgres() -> tuple[Bus, Bus, Any]:
        listeners = [Listener(dsn, {}) for _ in range(2)]
        buses = [PgBus(listener) for listener in listeners]
        for listener, bus in zip(listeners, buses):
            listener.start()
            await bus.start()

        async def close() -> None:
            for bus, listener in zip(buses, listeners):
                await bus.stop()
                await listener.stop()
        return buses[0], buses[1], close

    async def nats() -> tuple[Bus, Bus, Any]:
        buses = [NatsBus(nats_url), NatsBus(nats_url)]
        for bus in buses:
            await bus.start()

        async def close() -> None:
            for bus in buses:
                await bus.stop()
        return buses[0], buses[1], close

    return {"messages": messages, "burst": burst,
            "postgres": await measure(postgres, messages, burst, count),
            "nats": await measure(nats, messages, burst, count),
            "postgres_unbatched": await unbatched(dsn, min(messages, 20_000))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bus")
    parser.add_argument("--quick", action="store_true", help="seconds, not a minute")
    parser.add_argument("--messages", type=int, default=0, help="throughput messages")
    parser.add_argument("--burst", type=int, default=100, help="publishes per loop turn")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    messages = args.messages or (5_000 if args.quick else 100_000)
    count = 200 if args.quick else 2_000
    with tempfile.TemporaryDirectory(prefix="smsdora-bench-bus-") as tmp:
        pg = Postgres(Path(tmp) / "pgdata")
        proc = None
        try:
            dsn = urlunsplit(urlsplit(pg.start())._replace(path="/postgres"))
            proc, nats_url = start_nats()
            result = asyncio.run(run(dsn, nats_url, messages, args.burst, count))
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            pg.stop()
    print(f"bus on loopback: {messages:,} ids in bursts of {args.burst} a loop turn;"
          f" {count:,} one at a time")
    print(f"{'bus':<20}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}  notes")
    for name in ("postgres", "nats", "postgres_unbatched"):
        r = result[name]
        notes = f"{r['notify_statements']:,} NOTIFY statements" if "notify_statements" in r else ""
        print(f"{name:<20}{r['msgs_per_s']:>10,}{r.get('rtt_p50_ms', '-'):>9}"
              f"{r.get('rtt_p99_ms', '-'):>9}  {notes}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
