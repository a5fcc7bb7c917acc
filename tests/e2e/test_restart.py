"""State lives in PostgreSQL, not in the broker process: a restarted broker
redelivers what a phone had not finished, and the no-report clock runs from
the database."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from broker.settings import Settings
from tests.e2e.conftest import (
    SECRET,
    Account,
    Phone,
    Server,
    send_sms,
    start_server,
    stop_server,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)


def settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, hello_timeout_s=2,
                    last_seen_flush_s=0.2, sweep_s=0.2, pool_min=1, pool_max=5).with_(**changes)


async def connect_phone(server: Server, token: str, pending: list[str] | None = None) -> Phone:
    ws = await connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                       compression=None)
    p = Phone(ws=ws, device=None)  # type: ignore[arg-type]
    await p.send({"type": "hello", "protocol": 1, "pending": pending or []})
    p.welcome = await p.expect("welcome")
    return p


async def test_a_restarted_broker_redelivers_unfinished_jobs(
        tmp_path: Path, database_url: str, account: Account, db: asyncpg.Connection) -> None:
    device = await account.make_device()
    first = await start_server(settings(tmp_path), database_url)
    try:
        p = await connect_phone(first, device.token)
        async with httpx.AsyncClient(base_url=first.url) as http:
            acked = (await send_sms(http, account.key, message="acked")).json()["data"]["id"]
            unacked = (await send_sms(http, account.key, message="unacked")).json()["data"]["id"]
        assert (await p.expect("send"))["id"] == acked
        assert (await p.expect("send"))["id"] == unacked
        assert (await p.ask({"type": "ack", "id": acked}))["status"] == "sending"
    finally:
        await stop_server(first)
    await p.close()

    second = await start_server(settings(tmp_path), database_url)
    try:
        p = await connect_phone(second, device.token, pending=[acked, unacked])
        got = {(await p.expect("send"))["id"], (await p.expect("send"))["id"]}
        assert got == {acked, unacked}
        await p.nothing()
        # The phone had sent the acked one: it re-reports; the other it acks now.
        assert await p.ask({"type": "status", "id": acked, "status": "delivered"}) == {
            "type": "receipt", "id": acked, "status": "delivered"}
        assert (await p.ask({"type": "ack", "id": unacked}))["status"] == "sending"
        await p.close()
    finally:
        await stop_server(second)
    statuses = {r["id"]: r["status"] for r in await db.fetch("SELECT id::text, status FROM messages")}
    assert statuses == {acked: "delivered", unacked: "sending"}


async def test_a_job_in_sending_without_a_report_fails_as_no_report(
        tmp_path: Path, database_url: str, account: Account, db: asyncpg.Connection) -> None:
    device = await account.make_device()
    server = await start_server(settings(tmp_path, no_report_after_s=1), database_url)
    try:
        p = await connect_phone(server, device.token)
        async with httpx.AsyncClient(base_url=server.url) as http:
            mid = (await send_sms(http, account.key)).json()["data"]["id"]
        assert (await p.expect("send"))["id"] == mid
        assert (await p.ask({"type": "ack", "id": mid}))["status"] == "sending"

        async def failed() -> bool:
            row = await db.fetchrow("SELECT status, error FROM messages WHERE id = $1",
                                    uuid.UUID(mid))
            return (row["status"], row["error"]) == ("failed", "no report")
        await wait_for(failed, timeout=5, what="failed as no report")
        # The phone's late report is kept in the history; the status stays failed.
        assert await p.ask({"type": "status", "id": mid, "status": "sent"}) == {
            "type": "receipt", "id": mid, "status": "sent"}
        history = [r["status"] for r in await db.fetch(
            "SELECT status FROM message_history WHERE message_id = $1 ORDER BY at, array_position("
            " ARRAY['queued', 'dispatching', 'sending', 'sent', 'delivered', 'failed'], status)",
            uuid.UUID(mid))]
        assert history == ["queued", "dispatching", "sending", "failed", "sent"]
        await p.close()
    finally:
        await stop_server(server)
