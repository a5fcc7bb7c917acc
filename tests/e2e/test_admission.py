"""Admission: bounded queues with an explicit policy (issue 4).

- at most `max_queued_per_account` messages wait as `queued`; past it a send
  is a 503 in the error shape with Retry-After;
- a phone has at most `inflight_window` jobs it has not answered; past it
  new jobs wait as `queued` and go out when it answers;
- frames are throttled per connection by a token bucket, and a flood is
  closed with 1008; other phones are untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import websockets

from broker.settings import Settings
from tests.e2e.conftest import SECRET, Account, PhoneFactory, send_sms


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10, max_queued_per_account=2,
                    inflight_window=2, frame_rate=20.0, frame_burst=10)


async def test_the_queue_is_bounded_per_account(http: httpx.AsyncClient, account: Account,
                                                phone: PhoneFactory) -> None:
    p = await phone(await account.make_device(send_rate=1))
    assert (await send_sms(http, account.key)).json()["data"]["status"] == "dispatching"
    await p.expect("send")
    for _ in range(2):
        r = await send_sms(http, account.key)
        assert r.status_code == 201 and r.json()["data"]["status"] == "queued"
    r = await send_sms(http, account.key)
    assert (r.status_code, r.json()) == (503, {"statusCode": 503, "error": "Service Unavailable",
                                               "message": "Too many queued messages"})
    assert int(r.headers["retry-after"]) > 0


async def test_a_phone_that_does_not_answer_gets_no_more_than_its_window(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    p = await phone(await account.make_device(send_rate=0))
    first = [(await send_sms(http, account.key)).json()["data"] for _ in range(2)]
    assert [d["status"] for d in first] == ["dispatching", "dispatching"]
    jobs = [(await p.expect("send"))["id"] for _ in range(2)]
    third = (await send_sms(http, account.key)).json()["data"]
    assert third["status"] == "queued"
    await p.nothing()
    # The phone answers one: room again, and the waiting job goes out.
    assert (await p.ask({"type": "ack", "id": jobs[0]}))["type"] == "receipt"
    assert (await p.expect("send"))["id"] == third["id"]


async def test_a_frame_flood_is_closed_with_1008_and_other_phones_carry_on(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    flooder = await phone(await account.make_device("Flooder"))
    calm = await phone(await account.make_device("Calm"))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(500):
            await flooder.send({"type": "ping"})
        while True:
            await asyncio.wait_for(flooder.ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # The calm phone was not touched: it pings and takes a job.
    assert await calm.ask({"type": "ping"}) == {"type": "pong"}
    r = await send_sms(http, account.key)
    assert r.json()["data"]["device"]["deviceName"] == "Calm"
    assert (await calm.expect("send"))["id"] == r.json()["data"]["id"]
