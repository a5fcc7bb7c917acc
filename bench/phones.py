"""Simulated phones for the benchmark: thousands of WebSocket clients in one
process, lean enough that the phones cost less CPU than the broker they load.

Each phone is an `asyncio.Protocol` around websockets' sans-I/O
`ClientProtocol` (no task per connection, no keepalive of its own: it
answers the broker's pings, which the protocol object does by itself).
A phone says `hello`, waits for `welcome`, answers every `send` with `ack`,
and on the `sending` receipt reports `sent` then `delivered` at once. The
time each `send` frame arrives (time.time_ns(), shared by every process on
the machine) is kept by message id for the request-to-phone latency.

A phone whose socket ends reconnects after a jittered delay (first
uniform(0, --jitter) s, then 0.5 s doubling to 5 s, each times
uniform(0.5, 1)), as a fleet of real phones would after a broker restart.

Control: one JSON command a line on stdin, one JSON answer a line on stdout:
`{"cmd": "stats", "since_ns": T}`, `{"cmd": "dump", "path": P}` (send-frame
times to P, then forgotten), `{"cmd": "hold", "on": B}` (while on, `send`
frames are timed but not acked), `{"cmd": "quit"}`.

    python -m bench.phones --url ws://127.0.0.1:PORT/devices/ws \
        --tokens tokens.json --first 0 --count 1000 --source-ip 127.0.0.11
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import random
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import msgspec
import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from bench.procs import raise_nofile

HELLO = b'{"type":"hello","protocol":1,"appVersion":"bench/1"}'
CONNECT_TIMEOUT_S = 15.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0
MAX_FAILURE_LOG = 200_000
# Bind the source address only and let connect() pick the port, checking
# the whole 4-tuple (Linux IP_BIND_ADDRESS_NO_PORT; Python names it from
# 3.12). A port picked at bind time, blind to the destination, can meet a
# connection of the killed broker still closing, and that SYN is reset.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class _Frame(msgspec.Struct):
    type: str
    id: str = ""
    status: str = ""


_decode = msgspec.json.Decoder(_Frame).decode


class Phone:
    __slots__ = ("index", "token", "conn", "welcomed_at", "misses", "waiter", "jobs")

    def __init__(self, index: int, token: str) -> None:
        self.index = index
        self.token = token
        self.conn: Conn | None = None
        self.welcomed_at = 0  # time_ns of the current socket's welcome; 0: not connected
        self.misses = 0  # failed attempts in a row
        self.waiter: asyncio.Future[bool] | None = None  # the attempt's outcome
        self.jobs = 0  # `send` frames received


class Conn(asyncio.Protocol):
    __slots__ = ("pool", "phone", "ws", "transport")

    def __init__(self, pool: Pool, phone: Phone) -> None:
        self.pool = pool
        self.phone = phone
        self.ws = ClientProtocol(pool.uri, max_size=65536)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        request = self.ws.connect()
        request.headers["Authorization"] = f"Bearer {self.phone.token}"
        self.ws.send_request(request)
        self.flush()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if type(event) is Frame:
                if event.opcode is Opcode.TEXT:
                    self.on_text(event.data, now)
            elif isinstance(event, Response):
                if event.status_code == 101 and ws.handshake_exc is None:
                    ws.send_text(HELLO)
                else:
                    self.pool.failed(self.phone, f"http_{event.status_code}")
        self.flush()

    def on_text(self, data: bytes | bytearray | memoryview, now: int) -> None:
        frame = _decode(data)
        kind = frame.type
        pool = self.pool
        if kind == "send":
            pool.frames.setdefault(frame.id, now)
            self.phone.jobs += 1
            if not pool.holding:
                self.ws.send_text(b'{"type":"ack","id":"%s"}' % frame.id.encode())
        elif kind == "receipt":
            if frame.status == "delivered":
                pool.delivered()
            elif frame.status == "sending":
                mid = frame.id.encode()
                self.ws.send_text(b'{"type":"status","id":"%s","status":"sent"}' % mid)
                self.ws.send_text(b'{"type":"status","id":"%s","status":"delivered"}' % mid)
            pool.counts["receipt"] += 1
        elif kind == "welcome":
            pool.welcomed(self.phone, now)
        else:
            pool.counts[kind] += 1

    def flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.lost(self)


class Pool:
    def __init__(self, url: str, tokens: list[str], source_ip: str, jitter_s: float,
                 counter: mmap.mmap | None = None) -> None:
        self.uri = parse_uri(url)
        self.counter = counter
        self.delivered_receipts = 0
        self.source_ip = source_ip
        self.jitter_s = jitter_s
        self.phones = [Phone(i, t) for i, t in enumerate(tokens)]
        self.frames: dict[str, int] = {}
        self.connected = 0
        self.counts: Counter[str] = Counter()
        self.failure_log: list[tuple[int, str]] = []
        self.stopping = False
        self.holding = False  # `send` frames timed but not acked
        self.tasks: set[asyncio.Task[None]] = set()
        self.timers: set[asyncio.TimerHandle] = set()

    # --- outcomes -----------------------------------------------------------

    def delivered(self) -> None:
        """A `delivered` receipt: the broker has stored the last transition.
        The count is shared (mmap) with the load generator, which keeps the
        lifecycle run's unfinished messages under a window."""
        self.delivered_receipts += 1
        if self.counter is not None:
            struct.pack_into("Q", self.counter, 0, self.delivered_receipts)

    def welcomed(self, phone: Phone, now: int) -> None:
        if phone.welcomed_at == 0:
            self.connected += 1
        phone.welcomed_at = now
        phone.misses = 0
        if phone.waiter is not None and not phone.waiter.done():
            phone.waiter.set_result(True)

    def failed(self, phone: Phone, kind: str, at: int = 0) -> None:
        """`at`: when it happened, if known better than now (a busy loop may
        see a refused connect long after the SYN was answered)."""
        self.counts["failures"] += 1
        if len(self.failure_log) < MAX_FAILURE_LOG:
            self.failure_log.append((at or time.time_ns(), kind))
        if phone.waiter is not None and not phone.waiter.done():
            phone.waiter.set_result(False)
        conn = phone.conn
        if conn is not None and conn.transport is not None:
            conn.transport.abort()  # connection_lost schedules the retry
        elif conn is None:
            self.retry(phone)

    def lost(self, conn: Conn) -> None:
        phone = conn.phone
        if phone.conn is not conn:
            return
        phone.conn = None
        if phone.welcomed_at:
            self.connected -= 1
            phone.welcomed_at = 0
            self.counts["dropped"] += 1
        elif phone.waiter is not None and not phone.waiter.done():
            self.counts["failures"] += 1
            if len(self.failure_log) < MAX_FAILURE_LOG:
                self.failure_log.append((time.time_ns(), "closed_before_welcome"))
            phone.waiter.set_result(False)
        self.retry(phone)

    def retry(self, phone: Phone) -> None:
        if self.stopping:
            return
        if phone.misses == 0:
            delay = random.uniform(0, self.jitter_s)
        else:
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (phone.misses - 1))
            delay *= random.uniform(0.5, 1.0)
        phone.misses += 1
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            assert handle is not None
            self.timers.discard(handle)
            self.start(phone)

        handle = loop.call_later(delay, fire)
        self.timers.add(handle)

    # --- attempts -----------------------------------------------------------

    def start(self, phone: Phone) -> None:
        if self.stopping:
            return
        task = asyncio.get_running_loop().create_task(self.attempt(phone))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def attempt(self, phone: Phone) -> None:
        """One connect; returns once welcomed or failed (a failure has
        scheduled the next attempt)."""
        loop = asyncio.get_running_loop()
        phone.waiter = loop.create_future()
        self.counts["attempts"] += 1
        started = time.time_ns()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.source_ip, 0))
            sock.setblocking(False)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.sock_connect(sock, (self.uri.host, self.uri.port))
                _, conn = await loop.create_connection(lambda: Conn(self, phone), sock=sock)
        except ConnectionRefusedError:
            sock.close()
            return self.failed(phone, "tcp_refused", started)
        except TimeoutError:
            sock.close()
            return self.failed(phone, "tcp_timeout")
        except OSError as err:
            sock.close()
            return self.failed(phone, f"oserror_{err.errno}")
        phone.conn = conn
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await phone.waiter
        except TimeoutError:
            self.failed(phone, "welcome_timeout")

    async def ramp(self, concurrency: int) -> None:
        """Connect every phone, at most `concurrency` handshakes at a time."""
        gate = asyncio.Semaphore(concurrency)

        async def one(phone: Phone) -> None:
            async with gate:
                await self.attempt(phone)

        await asyncio.gather(*(one(p) for p in self.phones))

    # --- control ------------------------------------------------------------

    def stats(self, since_ns: int) -> dict[str, Any]:
        fresh = [p.welcomed_at for p in self.phones if p.welcomed_at >= since_ns > 0]
        failures: Counter[str] = Counter(kind for _, kind in self.failure_log)
        since: Counter[str] = Counter(kind for t, kind in self.failure_log if t >= since_ns)
        return {"phones": len(self.phones), "connected": self.connected,
                "welcomed_since": len(fresh), "last_welcome_ns": max(fresh, default=0),
                "failures": dict(failures), "failures_since": dict(since),
                "frames": len(self.frames), "counts": dict(self.counts),
                "phones_with_jobs": sum(1 for p in self.phones if p.jobs),
                "most_jobs": max((p.jobs for p in self.phones), default=0)}

    def stop(self) -> None:
        self.stopping = True
        for handle in self.timers:
            handle.cancel()
        for task in self.tasks:
            task.cancel()
        for phone in self.phones:
            if phone.conn is not None and phone.conn.transport is not None:
                phone.conn.transport.close()


async def serve(args: argparse.Namespace) -> None:
    raise_nofile()
    tokens: list[str] = msgspec.json.decode(Path(args.tokens).read_bytes())
    counter = None
    if args.counter:
        with open(args.counter, "wb+") as f:
            f.write(bytes(8))
            f.flush()
            counter = mmap.mmap(f.fileno(), 8)
    pool = Pool(args.url, tokens[args.first:args.first + args.count], args.source_ip,
                args.jitter, counter)
    loop = asyncio.get_running_loop()
    ramp = loop.create_task(pool.ramp(args.concurrency))
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    try:
        while line := await reader.readline():
            cmd: dict[str, Any] = msgspec.json.decode(line)
            answer: dict[str, Any]
            if cmd["cmd"] == "stats":
                answer = pool.stats(int(cmd.get("since_ns", 0)))
            elif cmd["cmd"] == "dump":
                Path(cmd["path"]).write_bytes(msgspec.json.encode(pool.frames))
                answer = {"n": len(pool.frames)}
                pool.frames = {}
            elif cmd["cmd"] == "hold":
                # Jobs arrive and are timed, but no phone acks them: the
                # accept path measured without the reports' load.
                pool.holding = bool(cmd["on"])
                answer = {"holding": pool.holding}
            elif cmd["cmd"] == "quit":
                pool.stop()
                out.write(b'{"bye":true}\n')
                out.flush()
                return
            else:
                answer = {"error": f"unknown command {cmd['cmd']!r}"}
            out.write(msgspec.json.encode(answer) + b"\n")
            out.flush()
    finally:
        pool.stop()
        ramp.cancel()
        await asyncio.gather(ramp, return_exceptions=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--source-ip", default="127.0.0.1")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--jitter", type=float, default=1.0)
    p.add_argument("--counter", help="file that counts `delivered` receipts (8 bytes, mmap)")
    uvloop.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
