"""Graceful shutdown (issue 4): on SIGTERM a broker stops taking sends (503
in the error shape), closes phone sockets with 1012 ("service restart", so
phones reconnect), flushes last-seen to PostgreSQL and exits within 10 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from tests.e2e.conftest import SECRET, Account, PhoneFactory, Server, free_port, send_sms, wait_for
from tests.e2e.test_restart import connect_phone

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


async def test_a_draining_broker_answers_sends_with_503(server: Server,
                                                       http: httpx.AsyncClient,
                                                       account: Account,
                                                       phone: PhoneFactory) -> None:
    await phone(await account.make_device())
    server.broker.draining = True
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (503, {"statusCode": 503, "error": "Service Unavailable",
                                               "message": "Broker is shutting down"})
    assert r.headers["retry-after"] == "5"


async def test_sigterm_closes_phones_with_1012_flushes_and_exits(
        database_url: str, account: Account, db: asyncpg.Connection, tmp_path: Path) -> None:
    device = await account.make_device()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "SMSDORA_SECRET": SECRET.decode(),
           "SMSDORA_HOME": str(tmp_path / "home"), "SMSDORA_PORT": str(port),
           "SMSDORA_LOG_LEVEL": "WARNING", "SMSDORA_NODE": "shutdown-test",
           "SMSDORA_LAST_SEEN_FLUSH_SECONDS": "60"}  # only the shutdown flush can write it
    proc = subprocess.Popen([sys.executable, "-m", "broker", "serve"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    try:
        url = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(url + "/health")).status_code == 200
            except httpx.TransportError:
                return False
        await wait_for(up, timeout=20, what="broker subprocess up")
        srv = Server(url=url, ws_url=f"ws://127.0.0.1:{port}/devices/ws", broker=None,  # type: ignore[arg-type]
                     uvicorn=None, database_url=database_url)  # type: ignore[arg-type]
        p = await connect_phone(srv, device.token)
        assert await p.ask({"type": "ping"}) == {"type": "pong"}
        before = await db.fetchval("SELECT last_seen_at FROM devices WHERE id = $1",
                                   uuid.UUID(device.id))

        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(p.ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        code = await asyncio.to_thread(proc.wait, 10)
        took = time.monotonic() - started
        assert code == 0 and took < 10, (code, took)
        row = await db.fetchrow("SELECT last_seen_at, online_node FROM devices WHERE id = $1",
                                uuid.UUID(device.id))
        assert row["last_seen_at"] is not None and row["last_seen_at"] != before
        assert row["online_node"] is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
