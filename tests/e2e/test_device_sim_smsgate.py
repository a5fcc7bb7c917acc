"""`device-sim --app smsgate` (broker/device_sim/smsgate.py) against a real
broker: real uvicorn on a free port, real PostgreSQL, the simulated SMS
Gateway app on real HTTP and SSE. Registration by key and by code, each
outcome, a cancel before sending, a re-listed job, a broker restart."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from broker.device_sim import AppSim, DeviceRejected
from broker.device_sim.app import CANCELLED, DELIVERED, PENDING, PROCESSED
from broker.services import pairing
from broker.settings import Settings
from tests.e2e import conftest
from tests.e2e.conftest import (
    SECRET,
    Account,
    Server,
    send_sms,
    start_server,
    stop_server,
    stored_history,
    wait_for,
)

pytestmark = pytest.mark.timeout(40)


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    # A quick sweeper and reassign delay: the cancel test waits for both. No
    # pacing of the phones it registers: a burst reaches the phone at once.
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, sweep_s=0.2, reassign_after_s=1, pool_min=1,
                    pool_max=10, default_send_rate=0)


@asynccontextmanager
async def running(sim: AppSim) -> AsyncIterator[AppSim]:
    """The sim's `run` as a task until the block ends; entered once its
    event stream is open."""
    task = asyncio.get_running_loop().create_task(sim.run())
    try:
        await sim.wait_until(lambda: sim.connected or task.done())
        if task.done():
            task.result()
        yield sim
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def status(db: asyncpg.Connection, mid: str) -> str | None:
    value = await db.fetchval("SELECT status FROM messages WHERE id = $1", uuid.UUID(mid))
    return None if value is None else str(value)


async def wait_status(db: asyncpg.Connection, mid: str, expected: str, timeout: float = 10) -> None:
    async def reached() -> bool:
        return await status(db, mid) == expected
    await wait_for(reached, timeout, f"message {mid} {expected}")


async def send(http: httpx.AsyncClient, account: Account, **extra: Any) -> str:
    r = await send_sms(http, account.key, **extra)
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["id"])


async def test_registered_by_key_a_message_is_delivered_once(
        server: Server, http: httpx.AsyncClient, account: Account,
        db: asyncpg.Connection) -> None:
    async with running(AppSim(server.url, key=account.key, delay_ms=20)) as sim:
        row = await db.fetchrow("SELECT account_id, transport, name FROM devices WHERE id = $1",
                                uuid.UUID(sim.device_id))
        assert dict(row) == {"account_id": account.id, "transport": "smsgate",
                             "name": "smsdora/device-sim"}
        assert sim.phone.login == account.email and sim.phone.token
        mid = await send(http, account)
        await wait_status(db, mid, "delivered")
        await sim.wait_until(lambda: not sim.phone.outbox())
        assert sim.sent_count[mid] == 1
        assert sim.jobs[mid].patches[-1] == DELIVERED
        # The first stream was told to fetch webhooks and settings; it did.
        await sim.wait_until(lambda: bool(sim.phone.settings))
        assert sim.phone.settings["gateway"] == {"notification_channel": "SSE_ONLY"}
    history = await stored_history(db, mid)
    assert history[:3] == ["queued", "dispatching", "sending"] and history[-1] == "delivered"


async def test_registered_by_code_once(server: Server, http: httpx.AsyncClient,
                                       account: Account, db: asyncpg.Connection) -> None:
    code = await pairing.make(db, SECRET, account.id)
    async with running(AppSim(server.url, code=code.code, name="pixel/by-code")) as sim:
        owner = await db.fetchval("SELECT account_id FROM devices WHERE id = $1",
                                  uuid.UUID(sim.device_id))
        assert owner == account.id
        mid = await send(http, account)
        await wait_status(db, mid, "delivered")
        assert sim.sent_count[mid] == 1
    with pytest.raises(DeviceRejected, match="401"):  # a one-time code is used up
        await asyncio.wait_for(AppSim(server.url, code=code.code).run(), 10)


@pytest.mark.parametrize("outcome, final, error", [
    ("sent", "sent", None),
    ("failed", "failed", "simulated failure"),
])
async def test_other_outcomes(server: Server, http: httpx.AsyncClient, account: Account,
                              db: asyncpg.Connection, outcome: Any, final: str,
                              error: str | None) -> None:
    async with running(AppSim(server.url, key=account.key, outcome=outcome)) as sim:
        mid = await send(http, account)
        await wait_status(db, mid, final)
        await sim.wait_until(lambda: not sim.phone.outbox())
        assert sim.sent_count[mid] == 1
    assert await db.fetchval("SELECT error FROM messages WHERE id = $1", uuid.UUID(mid)) == error


async def test_a_registered_phone_starts_with_its_token(server: Server, http: httpx.AsyncClient,
                                                        account: Account,
                                                        db: asyncpg.Connection) -> None:
    async with running(AppSim(server.url, key=account.key)) as first:
        token, device_id = first.phone.token, first.device_id
    assert token is not None and device_id is not None
    async with running(AppSim(server.url, token=token, device_id=device_id)) as again:
        assert again.device_id == device_id  # PATCH /device, no new registration
        mid = await send(http, account)
        await wait_status(db, mid, "delivered")
        assert again.sent_count[mid] == 1
    assert await db.fetchval("SELECT count(*) FROM devices") == 1
    # A token the broker does not know: refused without a key, a new device with one.
    unknown = "smsdev_00000000_" + "z" * 43
    with pytest.raises(DeviceRejected, match="401"):
        await asyncio.wait_for(AppSim(server.url, token=unknown, device_id=device_id).run(), 10)
    async with running(AppSim(server.url, token=unknown, device_id=device_id,
                              key=account.key)) as renewed:
        assert renewed.device_id not in (None, device_id)
    assert await db.fetchval("SELECT count(*) FROM devices") == 2


async def test_a_cancel_before_sending_gives_the_job_back(server: Server, http: httpx.AsyncClient,
                                                          account: Account,
                                                          db: asyncpg.Connection) -> None:
    first = AppSim(server.url, key=account.key)
    async with running(first):
        first.pause_radio()  # it holds the job unsent, as behind the app's own limits
        mid = await send(http, account)
        await first.wait_until(lambda: mid in first.jobs)
        assert first.jobs[mid].state == PENDING
    # Away longer than the reassign delay while another phone is online: the
    # broker asks for the job back ...
    async with running(AppSim(server.url, key=account.key, delay_ms=10)) as second:
        async def asked_back() -> bool:
            return await db.fetchval("SELECT handback FROM messages WHERE id = $1",
                                     uuid.UUID(mid)) == "requested"
        await wait_for(asked_back, 10, "the job asked back")
        # ... and the first phone, back, cancels it unsent: the second sends it.
        async with running(first):
            await wait_status(db, mid, "delivered")
            await first.wait_until(lambda: first.jobs[mid].patches == [CANCELLED])
            first.resume_radio()
            await asyncio.sleep(0.1)  # a radio that wrongly sent it would have started by now
        assert second.sent_count[mid] == 1
    assert first.sent_count[mid] == 0 and first.jobs[mid].state == CANCELLED
    assert str(await db.fetchval("SELECT device_id FROM messages WHERE id = $1",
                                 uuid.UUID(mid))) == second.device_id


async def test_a_relisted_known_job_is_patched_pending_and_sent_once(
        server: Server, http: httpx.AsyncClient, account: Account,
        db: asyncpg.Connection) -> None:
    async with running(AppSim(server.url, key=account.key)) as sim:
        sim.pause_radio()
        mid = await send(http, account)
        await sim.wait_until(lambda: mid in sim.jobs)
        sim.look()  # the app's periodic poll: the job is listed again
        await sim.wait_until(lambda: sim.jobs[mid].patches == [PENDING])
        assert await status(db, mid) == "sending"  # "I hold it" is the ack
        assert sim.sent_count[mid] == 0
        sim.resume_radio()
        await wait_status(db, mid, "delivered")
        await sim.wait_until(lambda: not sim.phone.outbox())
        assert sim.sent_count[mid] == 1 and sim.jobs[mid].patches[-1] == DELIVERED


async def test_a_broker_restart_loses_no_report(
        tmp_path: Path, database_url: str, account: Account, db: asyncpg.Connection,
        broker_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    port = conftest.free_port()
    monkeypatch.setattr(conftest, "free_port", lambda: port)  # the restart on the same port
    first = await start_server(broker_settings, database_url)
    sim = AppSim(first.url, key=account.key)
    task = asyncio.get_running_loop().create_task(sim.run())
    second: Server | None = None
    try:
        await sim.wait_until(lambda: sim.connected)
        sim.pause_radio()
        async with httpx.AsyncClient(base_url=first.url) as http:
            mid = await send(http, account)
        await sim.wait_until(lambda: mid in sim.jobs)
        # The SMS goes out and is held going out until the broker is down:
        # its end is reported to no broker. (Reported while the broker was
        # closing, it could reach a connection accepted just before the close
        # that asyncio then never serves, CPython gh-109564: its PATCH waited
        # out its 10 s read timeout.) Held in the step that sees it Processed,
        # before the radio's task runs again.
        sim.resume_radio()
        await sim.wait_until(lambda: sim.jobs[mid].state == PROCESSED)
        sim.pause_radio()
        await sim.wait_until(lambda: PROCESSED in sim.jobs[mid].patches)
        await stop_server(first)
        assert await status(db, mid) == "sending"
        sim.resume_radio()
        await sim.wait_until(lambda: sim.patch_retries > 0)  # its report found no broker
        second = await start_server(broker_settings, database_url)
        await wait_status(db, mid, "delivered", timeout=15)
        await sim.wait_until(lambda: sim.connected and not sim.phone.outbox(), timeout=15)
        assert sim.sent_count[mid] == 1 and sim.connections >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if second is not None:
            await stop_server(second)


async def test_over_https_it_trusts_the_ca_it_is_given(
        tmp_path: Path, database_url: str, account: Account, db: asyncpg.Connection,
        broker_settings: Settings) -> None:
    from broker.ops import tls

    made = tls.make(tmp_path / "tls", ["127.0.0.1"])
    server = await start_server(broker_settings.with_(tls_cert=made.cert, tls_key=made.key),
                                database_url)
    url = server.url.replace("http://", "https://")
    try:
        untrusting = AppSim(url, key=account.key)  # the system's CAs only: no TLS handshake
        task = asyncio.get_running_loop().create_task(untrusting.run())
        await asyncio.sleep(0.5)
        assert untrusting.device_id is None and not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with running(AppSim(url, key=account.key, ca_file=str(made.ca_cert))) as sim:
            trusted = ssl.create_default_context(cafile=str(made.ca_cert))
            async with httpx.AsyncClient(base_url=url, verify=trusted) as http:
                mid = await send(http, account)
            await wait_status(db, mid, "delivered")
            assert sim.sent_count[mid] == 1
    finally:
        await stop_server(server)


async def test_a_job_held_past_its_valid_until_fails_unsent(
        server: Server, http: httpx.AsyncClient, account: Account,
        db: asyncpg.Connection) -> None:
    async with running(AppSim(server.url, key=account.key)) as sim:
        sim.pause_radio()
        mid = await send(http, account, ttl=1)
        await sim.wait_until(lambda: mid in sim.jobs)
        assert sim.jobs[mid].valid_until is not None
        await asyncio.sleep(1.2)  # past validUntil, before the broker's own expiry (+ 1 s)
        sim.resume_radio()
        await wait_status(db, mid, "failed")
        await sim.wait_until(lambda: not sim.phone.outbox())  # the PATCH's answer, after the commit
        # Never sent; Failed is its last word. A listing of the job again
        # while the radio was off (a slow machine) made it say Pending first,
        # as the app does for a job it knows and has not handed to the modem.
        patches = sim.jobs[mid].patches
        assert sim.sent_count[mid] == 0 and patches[-1] == "Failed"
        assert set(patches[:-1]) <= {"Pending"}, patches
    assert await db.fetchval("SELECT error FROM messages WHERE id = $1",
                             uuid.UUID(mid)) == "TTL expired"


async def test_a_burst_is_sent_once_each(server: Server, http: httpx.AsyncClient,
                                         account: Account, db: asyncpg.Connection) -> None:
    async with running(AppSim(server.url, key=account.key)) as sim:
        sim.pause_radio()  # listings overlap, jobs listed again and again are only reported
        ids: list[str] = []
        for batch in range(30):  # 5 at a time: within the account's share of the pool
            ids += await asyncio.gather(*(send(http, account, message=f"burst {batch}.{n}")
                                          for n in range(5)))
        # At least the broker's in-flight window (100, a page) is held; the
        # rest waits in the queue for room, made by the phone's reports.
        await sim.wait_until(lambda: len(sim.jobs) >= 100)
        sim.resume_radio()

        async def all_delivered() -> bool:
            return await db.fetchval("SELECT count(*) FROM messages WHERE status = 'delivered'"
                                     ) == len(ids)
        await wait_for(all_delivered, 20, "every message delivered")
        assert set(sim.sent_count) == set(ids) and set(sim.sent_count.values()) == {1}


async def test_a_throttled_start_is_tried_again_not_given_up(
        tmp_path: Path, database_url: str, account: Account, db: asyncpg.Connection,
        broker_settings: Settings) -> None:
    # Two failed credentials from this address, then 429 for 1.5 s: the app's
    # registration worker retries anything but a 401, and so does the sim.
    server = await start_server(broker_settings.with_(auth_failures=2,
                                                      auth_failure_window_s=1.5), database_url)
    try:
        async with running(AppSim(server.url, key=account.key)) as first:
            token, device_id = first.phone.token, first.device_id
        async with httpx.AsyncClient(base_url=server.url) as http:
            for _ in range(3):
                await http.patch("/api/mobile/v1/device", json={"id": device_id},
                                 headers={"Authorization": "Bearer smsdev_00000000_" + "q" * 43})
            throttled = await http.get("/api/mobile/v1/settings",
                                       headers={"Authorization": f"Bearer {token}"})
            assert throttled.status_code == 429, throttled.text
            async with running(AppSim(server.url, token=token, device_id=device_id)) as sim:
                assert sim.device_id == device_id
                # The client sends from another address: this one is throttled
                # for every credential, good ones too, until its window ends.
                async with httpx.AsyncClient(base_url=server.url, transport=httpx.AsyncHTTPTransport(
                        local_address="127.0.0.2")) as client:
                    mid = await send(client, account)
                await wait_status(db, mid, "delivered")
    finally:
        await stop_server(server)
