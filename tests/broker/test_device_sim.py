"""The simulated phone: its pure state machine driven directly (sync), then
`DeviceSim` against a real broker on a free port and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn

from broker import keys, store
from broker.app import create_app
from broker.device_sim import (
    ACKED,
    CANCELLED,
    DELIVERED,
    DROPPED,
    FAILED,
    SENDING,
    DeviceRejected,
    DeviceSim,
    Phone,
    ws_url,
)
from broker.ops.server import uvicorn_config
from broker.settings import Settings
from protocol import frames

pytestmark = pytest.mark.timeout(30)

ID = "9b0e7f4c-0000-4000-8000-000000000001"
SEND = frames.Send(id=ID, recipient="+16502530000", message="hi")
AT = "2026-01-01T00:00:00.000+00:00"


def _receipt(status: str, message_id: str = ID) -> frames.Receipt:
    return frames.Receipt(id=message_id, status=status)


# --- the pure phone -----------------------------------------------------------


def test_send_ack_receipt_then_report() -> None:
    phone = Phone("delivered")
    assert phone.on_frame(SEND) == [frames.Ack(id=ID)]
    assert phone.jobs[ID].state == ACKED and phone.pending() == [ID]
    assert phone.go_ahead == [] and phone.sent_count[ID] == 0  # nothing before the receipt
    assert phone.on_frame(_receipt("sending")) == []
    assert phone.go_ahead == [ID] and phone.sent_count[ID] == 1
    assert phone.jobs[ID].state == SENDING and phone.pending() == [ID]
    reports = phone.finish_send(ID, AT)
    assert [(r.status, r.at) for r in reports] == [("sent", AT), ("delivered", AT)]
    assert phone.jobs[ID].state == DELIVERED and phone.pending() == []
    assert phone.outbox[ID] == reports
    phone.on_frame(_receipt("sent"))
    assert phone.outbox[ID] == reports[1:]
    phone.on_frame(_receipt("delivered"))
    assert phone.outbox == {}
    assert [e.kind for e in phone.events] == ["job", "sending", "reported", "receipt", "receipt"]


@pytest.mark.parametrize("outcome, expected", [
    ("sent", [("sent", None)]),
    ("failed", [("failed", "simulated failure")]),
])
def test_other_outcomes(outcome: Any, expected: list[tuple[str, str | None]]) -> None:
    phone = Phone(outcome)
    phone.on_frame(SEND)
    phone.on_frame(_receipt("sending"))
    assert [(r.status, r.error) for r in phone.finish_send(ID, AT)] == expected
    assert phone.jobs[ID].state == expected[-1][0]


def test_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError):
        Phone("lost")  # type: ignore[arg-type]


def test_repeated_send_before_the_go_ahead_acks_again() -> None:
    phone = Phone()
    phone.on_frame(SEND)
    assert phone.on_frame(SEND) == [frames.Ack(id=ID)]
    phone.on_frame(_receipt("sending"))
    phone.on_frame(_receipt("sending"))  # the receipt of the second ack
    assert phone.go_ahead == [ID] and phone.sent_count[ID] == 1
    assert phone.on_frame(SEND) == []  # going out now: nothing new


def test_repeated_send_after_sending_reports_again_never_sends() -> None:
    phone = Phone("sent")
    phone.on_frame(SEND)
    phone.on_frame(_receipt("sending"))
    [report] = phone.finish_send(ID, AT)
    assert phone.on_frame(SEND) == [report]  # still in the outbox: written again
    phone.on_frame(_receipt("sent"))
    assert phone.on_frame(SEND) == [report]  # receipted: the last report again
    assert phone.sent_count[ID] == 1 and phone.go_ahead == [ID]


def test_ack_receipt_saying_done_means_do_not_send() -> None:
    for status in ("sent", "delivered"):
        phone = Phone()
        phone.on_frame(SEND)
        phone.on_frame(_receipt(status))
        assert phone.go_ahead == [] and phone.sent_count[ID] == 0
        assert phone.jobs[ID].state == status and phone.pending() == []


def test_cancel_drops_an_unsent_job() -> None:
    phone = Phone()
    phone.on_frame(SEND)
    phone.on_frame(frames.Cancel(id=ID, reason="reassigned"))
    assert phone.jobs[ID].state == CANCELLED and phone.pending() == []
    phone.on_frame(_receipt("sending"))  # a late receipt is no go-ahead any more
    assert phone.go_ahead == [] and phone.sent_count[ID] == 0
    # Given again later (it came back to this phone): a fresh job.
    assert phone.on_frame(SEND) == [frames.Ack(id=ID)]
    assert phone.jobs[ID].state == ACKED


def test_cancel_after_the_go_ahead_is_too_late() -> None:
    phone = Phone()
    phone.on_frame(SEND)
    phone.on_frame(_receipt("sending"))
    phone.on_frame(frames.Cancel(id=ID, reason="expired"))
    assert phone.jobs[ID].state == SENDING
    assert phone.events[-1].kind == "refused"


def test_error_drops_the_job_or_its_reports() -> None:
    phone = Phone()
    phone.on_frame(SEND)
    phone.on_frame(frames.Error(code="not_yours", detail="no such job", id=ID))
    assert phone.jobs[ID].state == DROPPED
    phone.on_frame(_receipt("sending"))
    assert phone.sent_count[ID] == 0

    phone = Phone("failed")
    phone.on_frame(SEND)
    phone.on_frame(_receipt("sending"))
    phone.finish_send(ID, AT)
    phone.on_frame(frames.Error(code="refused", detail="final", id=ID))
    assert phone.outbox == {} and phone.jobs[ID].state == FAILED
    phone.on_frame(frames.Error(code="bad_json", detail="x"))  # no id: only logged
    assert phone.events[-1].kind == "refused"


def test_welcome_replays_the_outbox_and_hello_lists_pending() -> None:
    phone = Phone()
    other = "9b0e7f4c-0000-4000-8000-000000000002"
    phone.on_frame(SEND)
    phone.on_frame(_receipt("sending"))
    reports = phone.finish_send(ID, AT)
    phone.on_frame(frames.Send(id=other, recipient="+16502530000", message="b"))
    hello = phone.hello(frames.Health(battery=50))
    assert hello.protocol == frames.PROTOCOL_VERSION and hello.pending == [other]
    assert hello.appVersion.startswith("device-sim/")
    welcome = frames.Welcome(deviceId="d1", heartbeatSeconds=20, serverTime=AT)
    assert phone.on_welcome(welcome) == reports
    assert phone.device_id == "d1" and phone.heartbeat_s == 20


def test_ws_url() -> None:
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/devices/ws"
    assert ws_url("https://gw.example.com/") == "wss://gw.example.com/devices/ws"
    assert ws_url("ws://h:1/devices/ws") == "ws://h:1/devices/ws"
    with pytest.raises(ValueError):
        ws_url("ftp://h")


# --- against a real broker ------------------------------------------------------

SECRET = b"device-sim-test-secret"


@dataclass
class Broker:
    url: str
    db: asyncpg.Connection
    account_id: uuid.UUID
    key: str
    token: str

    async def send(self, recipient: str = "+16502530000", message: str = "hi") -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + "/messages/send", method="POST",
            data=json.dumps({"recipient": recipient, "message": message}).encode(),
            headers={"x-api-key": self.key, "Content-Type": "application/json"})

        def post() -> dict[str, Any]:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 201
                return json.loads(response.read())["data"]  # type: ignore[no-any-return]

        return await asyncio.to_thread(post)

    async def status(self, message_id: str) -> str | None:
        status = await self.db.fetchval("SELECT status FROM messages WHERE id = $1",
                                        uuid.UUID(message_id))
        return None if status is None else str(status)

    async def wait_status(self, message_id: str, status: str, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while await self.status(message_id) != status:
                await asyncio.sleep(0.02)

    async def history(self, message_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT status FROM message_history WHERE message_id = $1 ORDER BY"
            " array_position(ARRAY['queued','dispatching','sending','sent','delivered','failed'],"
            " status)", uuid.UUID(message_id))
        return [r["status"] for r in rows]


@pytest.fixture
async def broker(db: asyncpg.Connection, database_url: str,
                 tmp_path: Path) -> AsyncIterator[Broker]:
    settings = Settings(home=tmp_path, database_url=database_url, secret=SECRET, heartbeat_s=5,
                        pool_min=1, pool_max=4)
    server = uvicorn.Server(uvicorn_config(create_app(settings, database_url), settings,
                                           "127.0.0.1", 0))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                assert not task.done(), "broker did not start"
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        account = await store.create_account(db, "sim@example.com", "default", None)
        key, key_prefix = keys.make_secret(keys.KEY_KIND)
        await store.insert_key(db, account.id, "test", key_prefix, keys.digest(SECRET, key),
                               ["messages:send"], None, None)
        token, token_prefix = keys.make_secret(keys.TOKEN_KIND)
        await store.insert_device(db, account.id, "sim", token_prefix,
                                  keys.digest(SECRET, token), 0)
        yield Broker(f"http://127.0.0.1:{port}", db, account.id, key, token)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class Running:
    """A DeviceSim run as a task, cancelled on exit."""

    def __init__(self, sim: DeviceSim) -> None:
        self.sim = sim
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DeviceSim:
        self.task = asyncio.get_running_loop().create_task(self.sim.run())
        await self.sim.wait_until(lambda: self.sim.connected or self.task.done())  # type: ignore
        return self.sim

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_message_is_delivered_once(broker: Broker) -> None:
    async with Running(DeviceSim(broker.url, broker.token, delay_ms=20)) as sim:
        sent = await broker.send()
        await broker.wait_status(sent["id"], "delivered")
        assert sim.sent_count[sent["id"]] == 1
        await sim.wait_until(lambda: not sim.phone.outbox)
    assert await broker.history(sent["id"]) == [
        "queued", "dispatching", "sending", "sent", "delivered"]


async def test_failed_outcome(broker: Broker) -> None:
    async with Running(DeviceSim(broker.url, broker.token, outcome="failed")) as sim:
        sent = await broker.send()
        await broker.wait_status(sent["id"], "failed")
        assert sim.sent_count[sent["id"]] == 1
    error = await broker.db.fetchval("SELECT error FROM messages WHERE id = $1",
                                     uuid.UUID(sent["id"]))
    assert error == "simulated failure"


async def test_dropped_socket_mid_send_reconnects_and_sends_once(broker: Broker) -> None:
    async with Running(DeviceSim(broker.url, broker.token, delay_ms=300)) as sim:
        sent = await broker.send()
        await sim.wait_until(lambda: sim.sent_count[sent["id"]] == 1)
        await sim.drop_connection()
        # The broker redelivers the job on reconnect; the phone, keyed by id,
        # starts nothing new and its report goes out on the new socket.
        await broker.wait_status(sent["id"], "delivered")
        await sim.wait_until(lambda: not sim.phone.outbox)
        assert sim.connections == 2
        assert sim.sent_count[sent["id"]] == 1


async def test_second_connection_replaces_the_first(broker: Broker) -> None:
    first = DeviceSim(broker.url, broker.token)
    first_task = asyncio.get_running_loop().create_task(first.run())
    await first.wait_until(lambda: first.connected)
    async with Running(DeviceSim(broker.url, broker.token)) as second:
        await asyncio.wait_for(first_task, 10)  # run() returns: close 4000
        assert first.close_code == 4000 and second.connected
        sent = await broker.send()
        await broker.wait_status(sent["id"], "delivered")
        assert second.sent_count[sent["id"]] == 1 and first.sent_count[sent["id"]] == 0


async def test_refused_token_raises(broker: Broker) -> None:
    with pytest.raises(DeviceRejected):
        await asyncio.wait_for(
            DeviceSim(broker.url, "smsdev_00000000_" + "z" * 43).run(), 10)


async def test_held_job_that_is_not_ours_is_cancelled(broker: Broker) -> None:
    sim = DeviceSim(broker.url, broker.token)
    stale = str(uuid.uuid4())
    sim.phone.on_frame(frames.Send(id=stale, recipient="+16502530000", message="old"))
    assert sim.phone.pending() == [stale]
    async with Running(sim):
        await sim.wait_until(lambda: sim.jobs[stale].state == CANCELLED)
    assert sim.sent_count[stale] == 0


async def test_unreceipted_report_is_replayed_after_reconnect(broker: Broker) -> None:
    # A report the phone wrote but whose receipt it never saw (it crashed):
    # the outbox carries it to the broker on the next connection.
    async with Running(DeviceSim(broker.url, broker.token, delay_ms=0)):
        sent = await broker.send()
        await broker.wait_status(sent["id"], "delivered")
    replay = DeviceSim(broker.url, broker.token)
    message_id = sent["id"]
    replay.phone.on_frame(frames.Send(id=message_id, recipient="+16502530000", message="hi"))
    replay.phone.on_frame(frames.Receipt(id=message_id, status="sending"))
    replay.phone.finish_send(message_id, "2026-01-01T00:00:00Z")
    assert replay.phone.outbox[message_id]
    async with Running(replay):
        await replay.wait_until(lambda: not replay.phone.outbox)
    assert await broker.status(message_id) == "delivered"
    assert replay.jobs[message_id].state == DELIVERED


async def test_app_level_ping_every_heartbeat(db: asyncpg.Connection, database_url: str,
                                              tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url=database_url, secret=SECRET, heartbeat_s=1,
                        pool_min=1, pool_max=2)
    server = uvicorn.Server(uvicorn_config(create_app(settings, database_url), settings,
                                           "127.0.0.1", 0))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        account = await store.create_account(db, "ping@example.com", "default", None)
        token, prefix = keys.make_secret(keys.TOKEN_KIND)
        await store.insert_device(db, account.id, "p", prefix, keys.digest(SECRET, token), 0)
        async with Running(DeviceSim(f"http://127.0.0.1:{port}", token)) as sim:
            assert sim.phone.heartbeat_s == 1
            await sim.wait_until(lambda: sim.phone.pongs >= 2, timeout=5)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def test_a_report_the_broker_could_not_store_is_kept_and_said_again() -> None:
    """`error` code `unavailable` (the broker's database is away) is no
    refusal: the phone keeps the report and sends it again later."""
    phone = Phone("delivered")
    phone.on_frame(SEND)
    phone.on_frame(frames.Error(code=frames.UNAVAILABLE, detail="retry", id=ID))  # the ack's
    assert phone.jobs[ID].state == ACKED
    assert phone.take_retries() == [frames.Ack(id=ID)]
    phone.on_frame(_receipt("sending"))
    reports = phone.finish_send(ID, AT)
    phone.on_frame(frames.Error(code=frames.UNAVAILABLE, detail="retry", id=ID))
    assert phone.outbox[ID] == reports
    assert phone.take_retries() == reports and phone.take_retries() == []
    assert phone.sent_count[ID] == 1
    # A real refusal still drops the report.
    phone.on_frame(frames.Error(code="refused", detail="no", id=ID))
    assert ID not in phone.outbox
