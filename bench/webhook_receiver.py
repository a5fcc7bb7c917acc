"""The webhook phase's receiver: a bare ASGI app on uvicorn (httptools,
uvloop) that answers every POST 204 at once, in a process of its own so
that it takes none of the broker's CPU. It does not verify signatures (the
soak and the e2e suite do); it keeps, per `webhook-id`, the time the first
request with it arrived (time.time_ns(), the clock every bench process
shares) and counts the requests, so a repeat is seen as one.

Control: one JSON command a line on stdin, one JSON answer a line on stdout:
`{"cmd": "stats"}` (requests, distinct ids, first and last arrival),
`{"cmd": "dump", "path": P}` (every id -> its first arrival, ns, to P),
`{"cmd": "quit"}`.

    python -m bench.webhook_receiver --port P
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
import uvloop

_START = {"type": "http.response.start", "status": 204, "headers": []}
_BODY = {"type": "http.response.body", "body": b""}


class Receiver:
    def __init__(self) -> None:
        self.first: dict[str, int] = {}  # webhook-id -> first arrival, ns
        self.requests = 0
        self.last_ns = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the body, unread: only its end matters
            more = (await receive()).get("more_body", False)
        now = time.time_ns()
        self.requests += 1
        self.last_ns = now
        for name, value in scope["headers"]:
            if name == b"webhook-id":
                self.first.setdefault(value.decode(), now)
                break
        await send(_START)
        await send(_BODY)

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "ids": len(self.first),
                "first_ns": min(self.first.values(), default=0), "last_ns": self.last_ns}


async def serve(port: int) -> None:
    app = Receiver()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", loop="none", http="httptools", access_log=False,
                            backlog=2048, timeout_keep_alive=60)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    task = loop.create_task(server.serve())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    try:
        while line := await reader.readline():
            cmd: dict[str, Any] = msgspec.json.decode(line)
            answer: dict[str, Any]
            if cmd["cmd"] == "stats":
                answer = app.stats()
            elif cmd["cmd"] == "dump":
                Path(cmd["path"]).write_bytes(msgspec.json.encode(app.first))
                answer = {"n": len(app.first)}
            elif cmd["cmd"] == "quit":
                out.write(b'{"bye":true}\n')
                out.flush()
                return
            else:
                answer = {"error": f"unknown command {cmd['cmd']!r}"}
            out.write(msgspec.json.encode(answer) + b"\n")
            out.flush()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    uvloop.run(serve(p.parse_args().port))


if __name__ == "__main__":
    main()
