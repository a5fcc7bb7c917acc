"""The load generator: raw HTTP/1.1 keep-alive connections on uvloop.

Closed loop (`--mode closed`): `--conns` connections, each sends its next
request as soon as the previous answer is in, for `--duration` seconds: the
maximum rate of the accept path. Lifecycle loop (`--mode lifecycle`): the
same, but a request goes out only while fewer than `--window` accepted
messages are still waiting for their `delivered` receipt (the phones count
those in the `--counter` files): the maximum rate the whole lifecycle
sustains, with a bounded backlog. Open loop (`--mode open`): requests are due at a fixed
`--rate`, whatever the answers do, and go out on a free connection, a new
one when all are busy (up to `--max-conns`; past that a request waits, and
the wait is reported as `lag`).

Every request's send time (time.time_ns(), taken just before the write) is
written to `--out` with the message id of its 201, for the request-to-phone
latency; so are the answer's time and the counts of every status.

    python -m bench.loadgen --port P --key K --mode closed --conns 64 \
        --duration 8 --out closed.json
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import struct
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, cast

import msgspec
import uvloop

from bench.procs import raise_nofile

BODY = b'{"recipient":"+16502530000","message":"Your code is 4829"}'
GRACE_S = 10.0


class HttpConn(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, int]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.buf += data
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop >= 0 else len(head)])
        if len(buf) < end + 4 + length:
            return
        body = bytes(buf[end + 4:end + 4 + length])
        del buf[:end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((int(head[9:12]), body, now))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    async def request(self, payload: bytes) -> tuple[int, int, bytes, int]:
        """(send ns, status, body, answer ns)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        sent = time.time_ns()
        self.transport.write(payload)
        status, body, answered = await self.waiter
        return sent, status, body, answered


def message_id(body: bytes) -> str | None:
    at = body.find(b'"id":"')
    return body[at + 6:at + 42].decode() if at >= 0 else None


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.payload = (
            f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            f"Content-Type: application/json\r\nx-api-key: {args.key}\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
        self.ids: list[str] = []
        self.t_send: list[int] = []
        self.t_answer: list[int] = []
        self.statuses: Counter[str] = Counter()
        self.lags: list[int] = []
        self.sent = 0
        self.ok = 0
        self.opened = args.conns
        self.counters: list[mmap.mmap] = []
        for path in args.counter:
            with open(path, "rb") as f:
                self.counters.append(mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ))
        self.delivered_at_start = self.delivered()
        self.run_tag = os.urandom(6).hex().encode()  # keys of this run only

    def keyed_payload(self) -> bytes:
        """The request with an Idempotency-Key of its own (`--keyed`)."""
        head, _, rest = self.payload.partition(b"\r\n")
        return b"%s\r\nIdempotency-Key: %s-%d\r\n%s" % (head, self.run_tag, self.sent, rest)

    def delivered(self) -> int:
        return sum(struct.unpack_from("Q", c, 0)[0] for c in self.counters)

    async def connect(self) -> HttpConn:
        _, conn = await asyncio.get_running_loop().create_connection(
            HttpConn, "127.0.0.1", self.args.port)
        return conn

    async def one(self, conn: HttpConn) -> HttpConn:
        """One request; returns the connection to use next (a new one if
        the server closed this)."""
        if conn.closed:
            conn = await self.connect()
        self.sent += 1
        try:
            sent, status, body, answered = await conn.request(self.keyed_payload()
                                                              if self.args.keyed
                                                              else self.payload)
        except ConnectionError:
            self.statuses["conn_closed"] += 1
            return await self.connect()
        self.statuses[str(status)] += 1
        if status == 201:
            self.ok += 1
            mid = message_id(body)
            if mid is not None:
                self.ids.append(mid)
                self.t_send.append(sent)
                self.t_answer.append(answered)
        return conn

    async def closed_loop(self, conns: list[HttpConn], until: float, limit: int) -> None:
        async def worker(conn: HttpConn) -> None:
            while time.monotonic() < until and self.sent < limit:
                conn = await self.one(conn)

        await asyncio.gather(*(worker(c) for c in conns))

    async def lifecycle_loop(self, conns: list[HttpConn], until: float, limit: int) -> None:
        window = self.args.window

        async def worker(conn: HttpConn) -> None:
            while time.monotonic() < until and self.sent < limit:
                while self.ok - (self.delivered() - self.delivered_at_start) >= window:
                    if time.monotonic() >= until:
                        return
                    await asyncio.sleep(0.001)
                conn = await self.one(conn)

        await asyncio.gather(*(worker(c) for c in conns))

    async def open_loop(self, conns: list[HttpConn], until: float, limit: int) -> None:
        """Each request goes out when due on a free connection; with none
        free a new one is opened (up to --max-conns, then it waits)."""
        idle = list(conns)
        waiting: deque[int] = deque()
        tasks: set[asyncio.Task[None]] = set()
        opened = len(conns)
        loop = asyncio.get_running_loop()

        async def fire(conn: HttpConn | None, scheduled: int) -> None:
            while True:
                if conn is None:
                    try:
                        conn = await self.connect()
                    except OSError:
                        self.statuses["connect_error"] += 1
                        return
                self.lags.append(time.time_ns() - scheduled)
                conn = await self.one(conn)
                if not waiting:
                    idle.append(conn)
                    return
                scheduled = waiting.popleft()

        interval_ns = int(1e9 / self.args.rate)
        start = time.time_ns()
        n = 0
        while time.monotonic() < until and n < limit:
            now = time.time_ns()
            while start + n * interval_ns <= now and n < limit:
                scheduled = start + n * interval_ns
                n += 1
                if idle or opened < self.args.max_conns:
                    if not idle:
                        opened += 1
                    task = loop.create_task(fire(idle.pop() if idle else None, scheduled))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    waiting.append(scheduled)
            # Until the next request is due, and at least 1 ms: uvloop's
            # timers count whole milliseconds, and a 0.5 ms sleep came back
            # at once, spinning the generator at 0.7-0.9 cores (it shares the
            # machine with the broker it measures).
            due_ns = start + n * interval_ns - time.time_ns()
            await asyncio.sleep(max(0.001, due_ns / 1e9))
        self.opened = opened
        while tasks:
            await asyncio.gather(*list(tasks))

    async def main(self) -> dict[str, Any]:
        args = self.args
        conns = [await self.connect() for _ in range(args.conns)]
        t0 = time.time_ns()
        cpu0 = time.process_time()
        until = time.monotonic() + args.duration
        job = {"closed": self.closed_loop, "lifecycle": self.lifecycle_loop,
               "open": self.open_loop}[args.mode]
        try:
            await asyncio.wait_for(job(conns, until, args.max_requests),
                                   args.duration + GRACE_S)
        except TimeoutError:
            self.statuses["unanswered"] += self.sent - sum(self.statuses.values())
        t1 = time.time_ns()
        cpu_s = time.process_time() - cpu0
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()  # (the open loop's extra ones close at exit)
        lags = sorted(self.lags)
        return {"mode": args.mode, "conns": self.opened, "rate": args.rate,
                "duration_s": (t1 - t0) / 1e9, "t0_ns": t0, "t1_ns": t1, "sent": self.sent,
                # The generator's own CPU: it shares the machine with what it drives.
                "cores": cpu_s / ((t1 - t0) / 1e9),
                "statuses": dict(self.statuses),
                "lag_p99_ms": lags[int(len(lags) * 0.99)] / 1e6 if lags else 0.0,
                "ids": self.ids, "t_send": self.t_send, "t_answer": self.t_answer}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/messages/send")
    p.add_argument("--key", default="")
    p.add_argument("--mode", choices=("closed", "lifecycle", "open"), required=True)
    p.add_argument("--window", type=int, default=256,
                   help="lifecycle loop: most accepted messages not yet delivered")
    p.add_argument("--counter", action="append", default=[],
                   help="lifecycle loop: a phone process's delivered-receipt counter file")
    p.add_argument("--conns", type=int, default=64, help="connections opened first")
    p.add_argument("--max-conns", type=int, default=2048, help="open loop: at most this many")
    p.add_argument("--rate", type=float, default=0.0, help="requests a second (open loop)")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--max-requests", type=int, default=10**9)
    p.add_argument("--out", required=True)
    p.add_argument("--keyed", action="store_true",
                   help="an Idempotency-Key of its own on every request")
    args = p.parse_args()
    if args.mode == "open" and args.rate <= 0:
        p.error("--mode open needs --rate")
    if args.mode == "lifecycle" and not args.counter:
        p.error("--mode lifecycle needs --counter")
    raise_nofile()
    result = uvloop.run(Run(args).main())
    Path(args.out).write_bytes(msgspec.json.encode(result))


if __name__ == "__main__":
    main()
