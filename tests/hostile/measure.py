"""The issue's probes at full size, against a real `smsdora serve` process
with its default settings (tests/hostile/test_edges.py runs them scaled
down, with the deadlines shortened):

    python -m tests.hostile.measure [--tree PATH] [--sockets 3000]

`--tree`: the source tree to serve from (a checkout of an older commit, for
the figures before a change); the database is a scratch one on the tests'
embedded PostgreSQL. Prints one line per figure:

- drip: `--sockets` connections each sending `GET /health` and one header
  line a second, never the end of the head: how many the server still
  holds after 15 s, and a legitimate client's GET /health latency (p50 /
  p99, keep-alive) before and while they drip;
- flood: as many idle connections from one address: how many it admits;
- 100 MiB of header lines on one connection: the server's RSS growth, and
  how many bytes it took before it answered or closed;
- a WebSocket handshake dripped over 35 s: 101 or not;
- lockout: a second server with 4,096 descriptors (`ulimit -n 4096`), 5,000
  sockets from one address dripping heads for 15 s, and a client from
  another address meanwhile: its GET /health answered or not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from broker.ops import embedded_pg
from tests.conftest import REPO, TEST_PGDATA, free_port, with_database

HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def latency_ms(url: str, seconds: float, source: str = "127.0.0.1",
                     timeout: float = 10) -> tuple[float, float, int, int]:
    """GET /health back to back on one kept-alive connection: p50, p99,
    failures, requests."""
    times, failures = [], 0
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                ok = (await client.get(url + "/health")).status_code == 200
            except httpx.HTTPError:
                ok = False
            times.append((time.perf_counter() - t0) * 1000)
            failures += not ok
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)], failures, len(times)


async def open_many(port: int, n: int, sources: int = 1
                    ) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`n` connections, from 127.0.0.1 or spread over `sources` loopback
    addresses. The kernel completes a handshake the server never accepts
    (its descriptors are gone): those count as opened too."""
    out = []
    for i in range(n):
        source = "127.0.0.1" if sources == 1 else f"127.0.1.{i % sources + 1}"
        try:
            out.append(await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 2))
        except (TimeoutError, OSError):
            continue
    return out


async def dripper(writer: asyncio.StreamWriter, seconds: float) -> None:
    """A header line a second, for `seconds` or until the server closes."""
    try:
        writer.write(HEAD)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            writer.write(b"X-Drip: 1\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True


async def drip(url: str, port: int, sockets: int) -> None:
    p50, p99, _, _ = await latency_ms(url, 3)
    conns = await open_many(port, sockets, sources=10)  # under the per-address cap
    tasks = [asyncio.create_task(dripper(w, 15)) for _, w in conns]
    under = asyncio.create_task(latency_ms(url, 10))
    await asyncio.gather(*tasks)
    held = sum([not await closed(r, 0.01) for r, _ in conns])
    a50, a99, failed, _ = await under
    print(f"drip: {sockets} sockets (10 addresses) dripping a head for 15 s: {held} still held;"
          f" legitimate GET /health p50/p99 {p50:.1f}/{p99:.1f} ms before,"
          f" {a50:.1f}/{a99:.1f} ms during ({failed} failed)")
    for _, w in conns:
        w.close()


async def flood(port: int, sockets: int) -> None:
    conns = await open_many(port, sockets)
    refused = sum(await asyncio.gather(*(closed(r, 1.0) for r, _ in conns)))
    print(f"flood: {sockets} idle connections from one address: {sockets - refused} admitted,"
          f" {refused} closed at once")
    for _, w in conns:
        w.close()


async def big_head(port: int, pid: int) -> None:
    before = rss_kib(pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = b"X-Filler: " + b"b" * 1000 + b"\r\n"
    chunk, sent, peak = HEAD + line * 64, 0, before
    try:
        while sent < 100 * 2**20:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            chunk = line * 64
            if sent % (8 * 2**20) < len(chunk):
                peak = max(peak, rss_kib(pid))
    except (ConnectionError, OSError):
        pass
    await asyncio.sleep(1)
    peak = max(peak, rss_kib(pid))
    answer = b""
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        answer = await asyncio.wait_for(reader.read(200), 2)
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(nothing)"
    print(f"100 MiB of header lines: {sent / 2**20:.1f} MiB written before the server stopped"
          f" it; server RSS +{(peak - before) / 1024:.0f} MiB; answer: {status}")
    writer.close()


async def ws_drip(port: int, token: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (b"GET /devices/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            + base64.b64encode(os.urandom(16)) + b"\r\nAuthorization: Bearer "
            + token.encode() + b"\r\n")
    started = time.monotonic()
    answer = b""
    try:
        writer.write(head)
        for _ in range(35):
            await asyncio.sleep(1)
            writer.write(b"X-Drip: 1\r\n")
            await writer.drain()
        writer.write(b"\r\n")
        answer = await asyncio.wait_for(reader.read(200), 5)
    except (ConnectionError, OSError, TimeoutError):
        pass
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed)"
    print(f"WebSocket handshake dripped over 35 s: {status} after"
          f" {time.monotonic() - started:.1f} s")
    writer.close()


async def lockout(url: str, port: int, sockets: int) -> None:
    conns = await open_many(port, sockets)
    tasks = [asyncio.create_task(dripper(w, 15)) for _, w in conns]
    await asyncio.sleep(1)
    p50, p99, failed, tried = await latency_ms(url, 10, source="127.0.0.2", timeout=2)
    await asyncio.gather(*tasks)
    print(f"lockout: {len(conns)} sockets from one address dripping into a server with 4,096"
          f" descriptors; a client from another address meanwhile: {tried - failed} of {tried}"
          f" GET /health answered (2 s timeout), p50/p99 {p50:.1f}/{p99:.1f} ms of all tries")
    for _, w in conns:
        w.close()


def spawn(tree: Path, env: dict[str, str], nofile: int | None = None) -> subprocess.Popen[bytes]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return subprocess.Popen([sys.executable, "-m", "broker", "serve"], cwd=tree, env=env,
                            stderr=subprocess.DEVNULL, preexec_fn=limit)


async def wait_up(url: str) -> None:
    for _ in range(200):
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient() as c:
                if (await c.get(url + "/health")).status_code == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def device_token(dsn: str, secret: bytes) -> str:
    from broker import keys, store
    conn = await asyncpg.connect(dsn)
    try:
        acc = await store.create_account(conn, f"measure-{uuid.uuid4().hex[:8]}@example.com",
                                         "default", None)
        token, prefix = keys.make_secret(keys.TOKEN_KIND)
        await store.insert_device(conn, acc.id, "Phone", prefix, keys.digest(secret, token), 30)
        return token
    finally:
        await conn.close()


async def main(tree: Path, sockets: int) -> None:
    admin = embedded_pg.server_for(TEST_PGDATA)
    name = f"smsdora_test_{os.getpid()}_measure"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = with_database(admin, name)
    port, secret = free_port(), b"measure-secret-0123456789abcdef"
    env = {**os.environ, "DATABASE_URL": dsn, "SMSDORA_SECRET": secret.decode(),
           "SMSDORA_PORT": str(port), "SMSDORA_LOG_LEVEL": "ERROR",
           "SMSDORA_HOME": f"/tmp/{name}", "SMSDORA_METRICS_ADDR": ""}
    proc = spawn(tree, env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_up(url)
        token = await device_token(dsn, secret)
        await drip(url, port, sockets)
        await asyncio.sleep(1)
        await flood(port, sockets)
        await asyncio.sleep(1)
        await big_head(port, proc.pid)
        await ws_drip(port, token)
        stop(proc)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = spawn(tree, {**env, "SMSDORA_PORT": str(port)}, nofile=4096)
        await wait_up(url)
        await lockout(url, port, 5000)
    finally:
        stop(proc)
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tree", type=Path, default=REPO)
    p.add_argument("--sockets", type=int, default=3000)
    args = p.parse_args()
    asyncio.run(main(args.tree, args.sockets))
