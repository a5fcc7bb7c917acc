"""The simulated phones: the WebSocket phone's pure state machine driven
directly (sync), then `DeviceSim` against a real broker on a free port and
the real PostgreSQL; at the end the SMS Gateway app's pure state (`AppPhone`,
its SSE reader and dates; `AppSim` on a real broker is
tests/e2e/test_device_sim_smsgate.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
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
    AppPhone,
    DeviceRejected,
    DeviceSim,
    Phone,
    app,
    app_reconnect_s,
    mobile_base,
    ws_url,
)
from broker.device_sim.app import ListingRefused
from broker.device_sim.mobile import SseEvent, SseParser, app_date
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


# --- the SMS Gateway app's pure state (broker/device_sim/app.py, mobile.py) ------------

NOW = dt.datetime(2026, 1, 1, 16, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))
LATER = NOW + dt.timedelta(seconds=2)


def listing(*items: dict[str, Any]) -> bytes:
    return json.dumps([{"id": ID, "message": "hi", "textMessage": {"text": "hi"},
                        "phoneNumbers": ["+16502530000"], "withDeliveryReport": True,
                        "state": "Pending", "createdAt": "2026-01-01T09:00:00.000Z", **item}
                       for item in items]).encode()


def patch_body(phone: AppPhone, message_id: str = ID) -> list[dict[str, Any]]:
    _, _, body = phone.snapshot(message_id)
    parsed: list[dict[str, Any]] = json.loads(body)
    return parsed


def test_sse_parser_reads_as_okhttp_does() -> None:
    parser = SseParser()
    assert parser.feed("event: WebhooksUpdated\ndata: null\n\n:keepalive\n\n") == [
        SseEvent("WebhooksUpdated", "null")]
    assert parser.comments == 1
    # Split anywhere, CRLF split between two reads, CR alone, no `event:` line.
    assert parser.feed("event: MessageCancelled\r") == []
    assert parser.feed('\ndata: {"messageId":"x"}\r\n\r') == [
        SseEvent("MessageCancelled", '{"messageId":"x"}')]
    assert parser.feed("\ndata:\n\n") == [SseEvent("MessageEnqueued", "")]
    assert parser.feed("event: NoData\n\ndata: a\ndata: b\nid: 7\n\n") == [
        SseEvent("MessageEnqueued", "a\nb")]  # an event without data is never dispatched


def test_dates_urls_and_the_reconnect_schedule() -> None:
    assert app_date(NOW) == "2026-01-01T16:00:00.000+07:00"
    assert app_date(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) == "2026-01-01T00:00:00.000Z"
    assert mobile_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000/api/mobile/v1"
    assert mobile_base("https://gw.example.com/api/mobile/v1/") == \
        "https://gw.example.com/api/mobile/v1"
    assert mobile_base("http://h/mobile/v1") == "http://h/mobile/v1"
    with pytest.raises(ValueError):
        mobile_base("ws://h")
    assert [app_reconnect_s(n) for n in range(12)] == [5.0] * 5 + [30.0] * 5 + [60.0] * 2


def test_a_listed_job_goes_out_at_once_and_each_state_is_a_full_snapshot() -> None:
    phone = AppPhone("delivered")
    phone.on_listing(listing({}), NOW)
    assert phone.go_ahead == [ID] and phone.jobs[ID].state == app.PENDING
    assert phone.outbox() == []  # no PATCH for a new job: the app just sends it
    assert phone.start_send(ID, NOW) and phone.sent_count[ID] == 1
    assert patch_body(phone) == [{
        "id": ID, "state": "Processed", "recipients": [{"phoneNumber": "+16502530000",
                                                        "state": "Processed"}],
        "states": {"Pending": "2026-01-01T16:00:00.000+07:00",
                   "Processed": "2026-01-01T16:00:00.000+07:00"}}]
    count, state, _ = phone.snapshot(ID)
    phone.on_patched(ID, count, state)
    assert phone.outbox() == [] and phone.jobs[ID].patches == ["Processed"]
    phone.finish_send(ID, LATER)
    [item] = patch_body(phone)
    assert item["state"] == "Delivered" and list(item["states"]) == [
        "Pending", "Processed", "Sent", "Delivered"]
    assert phone.outbox() == [ID]
    assert [e.kind for e in phone.events] == ["job", "sending", "patched", "reported"]


@pytest.mark.parametrize("outcome, state, error", [
    ("sent", "Sent", None), ("failed", "Failed", "simulated failure")])
def test_app_outcomes(outcome: Any, state: str, error: str | None) -> None:
    phone = AppPhone(outcome)
    phone.on_listing(listing({}), NOW)
    phone.start_send(ID, NOW)
    phone.finish_send(ID, LATER)
    [item] = patch_body(phone)
    assert item["state"] == state and item["recipients"][0].get("error") == error


def test_a_sent_job_without_delivery_report_stays_sent() -> None:
    phone = AppPhone("delivered")
    phone.on_listing(listing({"withDeliveryReport": False}), NOW)
    phone.start_send(ID, NOW)
    phone.finish_send(ID, NOW)
    assert phone.jobs[ID].state == app.SENT


def test_a_known_job_listed_again_is_reported_never_sent_again() -> None:
    phone = AppPhone()
    phone.on_listing(listing({}), NOW)
    phone.on_listing(listing({}), LATER)
    assert phone.go_ahead == [ID] and phone.outbox() == [ID]
    [item] = patch_body(phone)
    assert item["state"] == "Pending" and item["states"] == {
        "Pending": "2026-01-01T16:00:00.000+07:00"}
    phone.start_send(ID, NOW)
    phone.finish_send(ID, NOW)
    phone.on_listing(listing({}), LATER)  # listed again after sending: its state again
    assert patch_body(phone)[0]["state"] == "Delivered"
    assert phone.go_ahead == [ID] and phone.sent_count[ID] == 1
    assert not phone.start_send(ID, NOW)  # the radio never takes a job twice


def test_cancelling_an_unsent_or_unknown_job_patches_cancelled() -> None:
    phone = AppPhone()
    phone.on_listing(listing({}), NOW)
    phone.on_listing(listing({"state": "Cancelling"}), LATER)
    assert phone.jobs[ID].state == app.CANCELLED
    [item] = patch_body(phone)
    assert item["state"] == "Cancelled" and item["recipients"][0]["state"] == "Cancelled"
    assert not phone.start_send(ID, NOW) and phone.sent_count[ID] == 0
    other = "9b0e7f4c-0000-4000-8000-000000000002"
    phone.on_listing(listing({"id": other, "state": "Cancelling"}), LATER)  # unknown here
    assert patch_body(phone, other) == [{
        "id": other, "state": "Cancelled", "recipients": [{"phoneNumber": "+16502530000",
                                                           "state": "Cancelled"}],
        "states": {"Cancelled": "2026-01-01T16:00:02.000+07:00"}}]
    assert phone.go_ahead == [ID]  # the unknown one never goes to the radio
    # Cancelled already: a listing as Cancelling again changes nothing (the app's edge).
    count, state, _ = phone.snapshot(other)
    phone.on_patched(other, count, state)
    phone.on_listing(listing({"id": other, "state": "Cancelling"}), LATER)
    assert other not in phone.outbox()


def test_a_cancel_after_sending_is_too_late() -> None:
    phone = AppPhone()
    phone.on_listing(listing({}), NOW)
    phone.start_send(ID, NOW)
    count, state, _ = phone.snapshot(ID)
    phone.on_patched(ID, count, state)
    phone.on_listing(listing({"state": "Cancelling"}), LATER)
    phone.on_event(SseEvent("MessageCancelled", json.dumps({"messageId": ID})), LATER)
    assert phone.jobs[ID].state == app.PROCESSED and phone.outbox() == []
    assert [e.detail for e in phone.events if e.kind == "refused"] == [
        "cancel too late: already Processed"] * 2


def test_message_cancelled_cancels_a_pending_job_only() -> None:
    phone = AppPhone()
    phone.on_listing(listing({}), NOW)
    cancel = SseEvent("MessageCancelled", json.dumps({"messageId": ID}))
    assert phone.on_event(cancel, LATER) is None
    assert phone.jobs[ID].state == app.CANCELLED and phone.outbox() == [ID]
    unknown = SseEvent("MessageCancelled", json.dumps({"messageId": "nope"}))
    assert phone.on_event(unknown, LATER) is None and "nope" not in phone.jobs
    phone.on_event(SseEvent("MessageCancelled", "null"), LATER)
    assert "without a messageId" in phone.events[-1].detail


def test_events_say_what_to_fetch() -> None:
    phone = AppPhone()
    assert phone.on_open() == "message"
    assert [phone.on_event(SseEvent(n, "null"), NOW) for n in (
        "MessageEnqueued", "WebhooksUpdated", "SettingsUpdated", "MessagesExportRequested",
        "Unknown")] == ["message", "webhooks", "settings", None, None]


def test_an_expired_job_fails_unsent() -> None:
    phone = AppPhone()
    phone.on_listing(listing({"validUntil": "2026-01-01T09:00:01.000Z"}), NOW)
    assert phone.start_send(ID, NOW)  # 16:00+07:00 is 09:00Z: not yet
    phone = AppPhone()
    phone.on_listing(listing({"validUntil": "2026-01-01T09:00:00Z"}), NOW)
    assert not phone.start_send(ID, NOW) and phone.sent_count[ID] == 0
    [item] = patch_body(phone)
    assert item["state"] == "Failed" and item["recipients"][0]["error"] == "TTL expired"


def test_listings_the_app_cannot_read_are_refused_whole() -> None:
    phone = AppPhone()
    for bad in (b"{}", listing({"createdAt": "2026-01-01T09:00:00.123456Z"}),
                listing({"validUntil": "2026-01-01 09:00:00"}), listing({"phoneNumbers": 1})):
        with pytest.raises(ListingRefused):
            phone.on_listing(bad, NOW)
    assert phone.jobs == {}
    phone.on_listing(listing({"textMessage": None, "message": None}), NOW)  # no content
    phone.on_listing(listing({"id": "dup", "phoneNumbers": ["+1", "+1"]}), NOW)
    assert phone.jobs == {} and phone.events[-1].kind == "refused"
    phone.on_listing(listing({"state": "SomethingNew"}), NOW)  # Gson: null, so Pending
    phone.on_listing(listing({"id": "done", "state": "Processed"}), NOW)  # ignored
    assert list(phone.jobs) == [ID]


def test_settings_and_webhooks_as_the_app_imports_them() -> None:
    phone = AppPhone()
    phone.on_settings(b'{"gateway":{"notification_channel":"SSE_ONLY"},'
                      b'"messages":{"limit_period":"PerMinute","limit_value":30}}')
    assert phone.events[-1].detail == "limit 30/min"
    phone.on_settings(b'{"gateway": null}')
    assert phone.events[-1].kind == "refused"
    phone.on_webhooks(b'[{"id":"w1","url":"https://h/in","event":"sms:received"}]')
    assert [w.event for w in phone.webhooks] == ["sms:received"]
    phone.on_webhooks(b'[{"id":"w2","url":"https://h/in","event":"sms:batch:received"}]')
    assert phone.events[-1].kind == "refused" and len(phone.webhooks) == 1


def test_a_refused_patch_is_dropped_and_a_newer_state_is_sent_after_an_older_answer() -> None:
    phone = AppPhone()
    phone.on_listing(listing({}), NOW)
    phone.start_send(ID, NOW)
    count, state, _ = phone.snapshot(ID)
    phone.finish_send(ID, LATER)  # while the Processed PATCH is on its way
    phone.on_patched(ID, count, state)
    assert phone.outbox() == [ID]  # the Delivered snapshot is still to go
    count, state, _ = phone.snapshot(ID)
    phone.on_patch_refused(ID, count, "400 bad")
    assert phone.outbox() == [] and phone.events[-1].kind == "refused"
