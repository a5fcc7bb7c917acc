"""The baseline of the memory row: a bare `websockets` server holding the
same sockets (compression off, the broker's frame limit and heartbeat), that
answers `hello` with a `welcome` so the phones need no special case.

    python -m bench.bare_ws --port P
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from websockets.asyncio.server import ServerConnection, serve

from bench.procs import raise_nofile

WELCOME = '{"type":"welcome","deviceId":"bare","heartbeatSeconds":20,"serverTime":""}'


async def handler(ws: ServerConnection) -> None:
    async for message in ws:
        if isinstance(message, str) and '"hello"' in message:
            await ws.send(WELCOME)


async def run(port: int, heartbeat_s: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    # backlog: uvicorn's default, so that both servers see the same accept queue.
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65536,
                     ping_interval=heartbeat_s, ping_timeout=heartbeat_s, backlog=2048):
        await stop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--heartbeat", type=int, default=20)
    args = p.parse_args()
    raise_nofile()
    uvloop.run(run(args.port, args.heartbeat))


if __name__ == "__main__":
    main()
