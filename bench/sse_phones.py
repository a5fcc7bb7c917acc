"""Simulated phones on the SMS Gateway for Android app's mobile API, for the
benchmark: each holds one `GET /api/mobile/v1/events` stream open and, as
the app does, looks at its jobs (`GET /message?order=fifo`) when the stream
opens and after every `event: MessageEnqueued`, then reports each new job
`Delivered` (`PATCH /message`, one item a request, as the app's
SendStateWorker sends them; up to `PATCH_CONNS` at once, as the app's
workers run side by side).

Raw HTTP/1.1 on uvloop, keep-alive: per phone one connection for the
stream, one for the listings (one at a time: an event that arrives while
one is in flight makes another follow it) and up to `PATCH_CONNS` for the
reports. Times are `time.time_ns()`, the clock the load generator stamps
its requests with: each `MessageEnqueued` read (per phone, in order) and,
per message id, the phone that listed it first and when that listing's
answer was read.

Control, one JSON command a line on stdin, one answer a line on stdout (as
bench/phones.py): `{"cmd": "stats"}`, `{"cmd": "dump", "path": P}` (the
event and listing times to P, then forgotten), `{"cmd": "quit"}`.

    python -m bench.sse_phones --port P --tokens tokens.json --count 100
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import msgspec
import uvloop

from bench.loadgen import HttpConn
from bench.procs import raise_nofile

API = "/api/mobile/v1"
PATCH_CONNS = 4
CONNECT_TIMEOUT_S = 15.0
RECONNECT_S = 1.0  # the app waits 5 s; a bench run is shorter than that
RETRY_S = 1.0  # a listing or report not answered 2xx is made again after this
PATCH_TRIES = 3
RECIPIENT = "+16502530000"  # bench/loadgen.py's


class _Item(msgspec.Struct):
    id: str


_decode_list = msgspec.json.Decoder(list[_Item]).decode


class StreamConn(asyncio.Protocol):
    """`GET /events`: the response head, then the chunked body read as the
    app's parser reads it (an event is dispatched at a blank line once a
    `data` line was seen; `:` lines are comments)."""

    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_done = False
        self.chunked = False
        self.lines = bytearray()
        self.name: bytes | None = None
        self.data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.phone.pool.request(
            "GET", f"{API}/events", self.phone.token,
            extra="User-Agent: okhttp/4.10.0\r\nAccept-Encoding: gzip\r\n"))

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf
        buf += data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[:end + 4]
            self.head_done = True
            status = int(head[9:12])
            if status != 200 or b"content-type: text/event-stream" not in head:
                self.phone.pool.counts[f"stream_http_{status}"] += 1
                assert self.transport is not None
                self.transport.close()
                return
            self.chunked = b"transfer-encoding: chunked" in head
            self.phone.opened()
        if not self.chunked:
            self.feed(bytes(buf), now)
            buf.clear()
            return
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            if size == 0:
                del buf[:]
                if self.transport is not None:
                    self.transport.close()
                return
            if len(buf) < eol + 2 + size + 2:
                return
            self.feed(bytes(buf[eol + 2:eol + 2 + size]), now)
            del buf[:eol + 2 + size + 2]

    def feed(self, data: bytes, now: int) -> None:
        lines = self.lines
        lines += data
        while True:
            eol = lines.find(b"\n")
            if eol < 0:
                return
            line = bytes(lines[:eol]).rstrip(b"\r")
            del lines[:eol + 1]
            if not line:
                if self.data:
                    self.phone.event(self.name or b"MessageEnqueued", now)
                self.name, self.data = None, False
            elif line[:1] == b":":
                self.phone.pool.counts["comments"] += 1
            else:
                key, _, value = line.partition(b":")
                if key == b"event":
                    self.name = value.lstrip(b" ")
                elif key == b"data":
                    self.data = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.phone.stream_lost(self)


class Phone:
    def __init__(self, pool: Pool, index: int, token: str) -> None:
        self.pool = pool
        self.index = index
        self.token = token
        self.stream: StreamConn | None = None
        self.online = False  # its first event read (the broker attached the stream)
        self.events: list[int] = []  # MessageEnqueued read, ns
        self.lister: HttpConn | None = None
        self.listing = False
        self.again = False
        self.seen: set[str] = set()
        self.to_report: list[str] = []
        self.reporters: list[HttpConn] = []  # idle report connections
        self.reporting = 0
        self.jobs = 0
        self.list_payload = pool.request("GET", f"{API}/message?order=fifo", token)

    # --- the stream -----------------------------------------------------------

    async def connect_stream(self) -> None:
        loop = asyncio.get_running_loop()
        self.pool.counts["stream_attempts"] += 1
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(
                    lambda: StreamConn(self), self.pool.host, self.pool.port)
        except (OSError, TimeoutError) as err:
            self.pool.counts[f"stream_error_{type(err).__name__}"] += 1
            self.pool.later(RECONNECT_S, self)
            return
        self.stream = conn

    def opened(self) -> None:
        """200 and `text/event-stream`: the app's onOpen, an immediate look."""
        self.pool.counts["streams_opened"] += 1
        self.look()

    def event(self, name: bytes, now: int) -> None:
        pool = self.pool
        if not self.online:
            self.online = True
            pool.online += 1
        pool.counts["event_" + name.decode(errors="replace")] += 1
        if name == b"MessageEnqueued":
            self.events.append(now)
            self.look()

    def stream_lost(self, conn: StreamConn) -> None:
        if self.stream is not conn:
            return
        self.stream = None
        if self.online:
            self.online = False
            self.pool.online -= 1
            self.pool.counts["streams_dropped"] += 1
        self.pool.later(RECONNECT_S, self)

    # --- listing and reports --------------------------------------------------

    def look(self) -> None:
        if self.listing:
            self.again = True
            return
        self.listing = True
        self.pool.spawn(self._list())

    async def _list(self) -> None:
        pool = self.pool
        try:
            while True:
                self.again = False
                if self.lister is None or self.lister.closed:
                    self.lister = await pool.connect()
                try:
                    _, status, body, answered = await self.lister.request(self.list_payload)
                except ConnectionError:
                    pool.counts["list_conn_closed"] += 1
                    self.lister = None
                    continue
                pool.counts[f"list_{status}"] += 1
                if status != 200:
                    # The app's worker tries again (from 10 s on); sooner here.
                    await asyncio.sleep(RETRY_S)
                    continue
                for item in _decode_list(body):
                    if item.id not in self.seen:
                        self.seen.add(item.id)
                        self.jobs += 1
                        pool.listed.setdefault(item.id, (self.index, answered))
                        self.to_report.append(item.id)
                self.report()
                if not self.again:
                    return
        except OSError as err:
            pool.counts[f"list_error_{type(err).__name__}"] += 1
        finally:
            self.listing = False

    def report(self) -> None:
        while self.to_report and self.reporting < PATCH_CONNS:
            self.reporting += 1
            self.pool.spawn(self._report(self.to_report.pop(0)))

    async def _report(self, message_id: str) -> None:
        pool = self.pool
        body = (b'[{"id":"%s","state":"Delivered","recipients":[{"phoneNumber":"%s",'
                b'"state":"Delivered"}],"states":{}}]' % (message_id.encode(),
                                                          RECIPIENT.encode()))
        payload = pool.request("PATCH", f"{API}/message", self.token, body=body)
        conn = self.reporters.pop() if self.reporters else None
        try:
            for _ in range(PATCH_TRIES):
                if conn is None or conn.closed:
                    conn = await pool.connect()
                try:
                    _, status, _, _ = await conn.request(payload)
                except ConnectionError:
                    pool.counts["patch_conn_closed"] += 1
                    conn = None
                    continue
                pool.counts[f"patch_{status}"] += 1
                if 200 <= status < 300:
                    break
                await asyncio.sleep(RETRY_S)  # the app retries too (from 10 s on)
        except OSError as err:
            pool.counts[f"patch_error_{type(err).__name__}"] += 1
            conn = None
        finally:
            if conn is not None and not conn.closed:
                self.reporters.append(conn)
            self.reporting -= 1
            self.report()


class Pool:
    def __init__(self, host: str, port: int, tokens: list[str]) -> None:
        self.host = host
        self.port = port
        self.phones = [Phone(self, i, t) for i, t in enumerate(tokens)]
        self.online = 0
        self.counts: Counter[str] = Counter()
        self.listed: dict[str, tuple[int, int]] = {}  # message id -> (phone, ns)
        self.tasks: set[asyncio.Task[None]] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self.stopping = False

    def request(self, method: str, path: str, token: str, body: bytes = b"",
                extra: str = "") -> bytes:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {token}\r\n{extra}")
        if method == "GET" and not extra:
            head += "User-Agent: me.capcom.smsgateway/1.68.0\r\nAccept: application/json\r\n"
        if body:
            head += (f"User-Agent: me.capcom.smsgateway/1.68.0\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
        return (head + "\r\n").encode() + body

    async def connect(self) -> HttpConn:
        _, conn = await asyncio.get_running_loop().create_connection(
            HttpConn, self.host, self.port)
        return conn

    def spawn(self, coro: Any) -> None:
        if self.stopping:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def later(self, delay: float, phone: Phone) -> None:
        if self.stopping:
            return
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            assert handle is not None
            self.timers.discard(handle)
            self.spawn(phone.connect_stream())

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self.timers.add(handle)

    async def ramp(self, concurrency: int) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(phone: Phone) -> None:
            async with gate:
                await phone.connect_stream()

        await asyncio.gather(*(one(p) for p in self.phones))

    def stats(self) -> dict[str, Any]:
        return {"phones": len(self.phones), "online": self.online, "counts": dict(self.counts),
                "listed": len(self.listed),
                "phones_with_jobs": sum(1 for p in self.phones if p.jobs),
                "most_jobs": max((p.jobs for p in self.phones), default=0)}

    def dump(self, path: str) -> dict[str, Any]:
        Path(path).write_bytes(msgspec.json.encode(
            {"events": [p.events for p in self.phones], "listed": self.listed}))
        answer = {"events": sum(len(p.events) for p in self.phones), "listed": len(self.listed)}
        for p in self.phones:
            p.events = []
        self.listed = {}
        return answer

    def stop(self) -> None:
        self.stopping = True
        for handle in self.timers:
            handle.cancel()
        for task in self.tasks:
            task.cancel()
        for phone in self.phones:
            conns = [phone.lister, *phone.reporters]
            if phone.stream is not None and phone.stream.transport is not None:
                phone.stream.transport.close()
            for conn in conns:
                if conn is not None and conn.transport is not None:
                    conn.transport.close()


async def serve(args: argparse.Namespace) -> None:
    raise_nofile()
    tokens: list[str] = msgspec.json.decode(Path(args.tokens).read_bytes())
    pool = Pool("127.0.0.1", args.port, tokens[args.first:args.first + args.count])
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
                answer = pool.stats()
            elif cmd["cmd"] == "dump":
                answer = pool.dump(cmd["path"])
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
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=50)
    uvloop.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
