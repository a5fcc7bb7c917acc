"""Webhooks end to end (CONTRACT section 9): a real broker, a real phone on
the WebSocket, and a real receiver (tests/e2e/webhook_receiver.py) that
verifies every delivery with the `standardwebhooks` library and dedups by
`webhook-id`. Retries are on a short schedule here; the real one is a
setting (SMSDORA_WEBHOOK_RETRIES) whose default the unit tests check."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from broker.ops import metrics
from broker.settings import Settings
from tests.e2e.conftest import SECRET, Account, PhoneFactory, Server, send_sms, wait_for
from tests.e2e.webhook_receiver import Got, Receiver, Reply, running

pytestmark = pytest.mark.timeout(60)

RETRIES = (0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3)
LIFECYCLE = ["queued", "dispatching", "sending", "sent", "delivered"]


@pytest.fixture
def broker_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", secret=SECRET, heartbeat_s=20, hello_timeout_s=2,
                    last_seen_flush_s=0.2, pool_min=1, pool_max=10,
                    webhook_allow_private=True, webhook_retries_s=RETRIES, webhook_poll_s=0.2,
                    webhook_timeout_s=2.0)



async def subscribe(http: httpx.AsyncClient, account: Account, receiver: Receiver,
                    events: list[str] | None = None, url: str | None = None) -> dict[str, Any]:
    r = await http.post("/webhooks", headers=account.headers,
                        json={"url": url or receiver.url, "events": events or ["*"],
                              "description": "test receiver"})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    receiver.secrets.append(data["secret"])
    return data


async def deliver_one(http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
                      steps: tuple[str, ...] = ("sent", "delivered")) -> str:
    """A message through a real phone: ack, then each report in `steps`."""
    device = await account.make_device("Pixel")
    p = await phone(device)
    r = await send_sms(http, account.key)
    assert r.status_code == 201, r.text
    mid: str = r.json()["data"]["id"]
    assert (await p.expect("send"))["id"] == mid
    assert (await p.ask({"type": "ack", "id": mid}))["status"] == "sending"
    for status in steps:
        assert (await p.ask({"type": "status", "id": mid, "status": status}))["status"] == status
    return mid


async def test_every_step_of_a_message_is_delivered_signed_and_in_order(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver)
    assert hook["secret"].startswith("whsec_")
    mid = await deliver_one(http, account, phone)
    await receiver.wait(lambda: len(receiver.statuses(mid)) == 5)
    assert receiver.statuses(mid) == LIFECYCLE
    assert all(g.verified for g in receiver.requests), "every delivery verifies"
    ids = [g.webhook_id for g in receiver.requests if g.body["type"].startswith("message.")]
    assert len(set(ids)) == 5, "one webhook-id per event"
    # `data` is the message as GET shows it, as it stood at that step.
    shown = (await http.get(f"/messages/{mid}", headers=account.headers)).json()["data"]
    for body in receiver.events():
        if body["type"] == "device.online":
            continue
        assert body["type"] == f"message.{body['data']['status']}"
        assert {k: v for k, v in body["data"].items() if k != "status"} == \
            {k: v for k, v in shown.items() if k not in ("status", "history")}
        assert body["timestamp"] == next(h["at"] for h in shown["history"]
                                         if h["status"] == body["data"]["status"])
    # The secret is shown once: never in the reads.
    listed = (await http.get("/webhooks", headers=account.headers)).json()["data"]
    assert [w["id"] for w in listed] == [hook["id"]] and "secret" not in listed[0]
    one = (await http.get(f"/webhooks/{hook['id']}", headers=account.headers)).json()["data"]
    assert "secret" not in one and one["enabled"] is True


async def test_only_the_subscribed_events_are_sent(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver) -> None:
    await subscribe(http, account, receiver, ["message.delivered", "message.failed"])
    mid = await deliver_one(http, account, phone)
    await receiver.wait(lambda: len(receiver.events()) == 1)
    await asyncio.sleep(0.5)
    assert receiver.statuses(mid) == ["delivered"]


async def test_a_late_sent_after_delivered_fires_nothing(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver) -> None:
    await subscribe(http, account, receiver)
    mid = await deliver_one(http, account, phone, steps=("delivered", "sent"))
    await receiver.wait(lambda: "delivered" in receiver.statuses(mid))
    await asyncio.sleep(0.5)
    assert receiver.statuses(mid) == ["queued", "dispatching", "sending", "delivered"]


async def test_failures_are_retried_with_the_same_id_and_signed_anew(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    tries: list[Got] = []

    def answer(got: Got) -> Reply:
        tries.append(got)
        return Reply(500) if len(tries) < 3 else Reply(200)

    receiver.answer = answer
    await send_sms(http, account.key, ttl=60)  # no phone: it waits, queued
    await receiver.wait(lambda: len(receiver.delivered) == 1)
    assert len(tries) == 3
    assert len({g.webhook_id for g in tries}) == 1, "the same webhook-id on every attempt"
    assert all(g.verified for g in tries)
    assert len({g.raw for g in tries}) == 1, "the same body on every attempt"
    assert len({g.signature for g in tries}) >= 2 or len({g.timestamp for g in tries}) == 1
    items: list[dict[str, Any]] = []

    async def recorded() -> bool:
        # The receiver has its 200 a moment before the sender commits it.
        nonlocal items
        r = await http.get(f"/webhooks/{hook['id']}/deliveries", headers=account.headers)
        items = r.json()["data"]
        return len(items) == 3
    await wait_for(recorded, what="the third attempt recorded")
    assert [(i["attempt"], i["statusCode"]) for i in items] == [(3, 200), (2, 500), (1, 500)]
    assert items[0]["nextRetryAt"] is None and items[0]["error"] is None
    assert items[1]["error"] == "answered 500" and items[1]["nextRetryAt"] is not None
    assert {i["eventId"] for i in items} == {tries[0].webhook_id}


async def test_a_receiver_down_for_a_while_gets_every_event_when_back(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver) -> None:
    await subscribe(http, account, receiver)
    await receiver.stop()  # connection refused from here on
    sent = [(await send_sms(http, account.key, ttl=60)).json()["data"]["id"] for _ in range(5)]
    await asyncio.sleep(1.0)  # a few attempts each, all refused
    await receiver.start()
    await receiver.wait(lambda: all(receiver.statuses(m) == ["queued"] for m in sent))
    assert all(g.verified for g in receiver.requests)


async def test_retry_after_is_honoured(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    await subscribe(http, account, receiver, ["message.queued"])
    times: list[float] = []

    def answer(got: Got) -> Reply:
        times.append(time.monotonic())
        return Reply(429, {"retry-after": "2"}) if len(times) == 1 else Reply(200)

    receiver.answer = answer
    await send_sms(http, account.key, ttl=60)
    await receiver.wait(lambda: len(receiver.delivered) == 1, timeout=15)
    assert times[1] - times[0] >= 1.9, "the schedule said 0.3 s; Retry-After said 2 s"


async def test_redirects_are_not_followed(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    receiver.answer = lambda got: Reply(302, {"location": receiver.url + "/elsewhere"})
    await send_sms(http, account.key, ttl=60)
    await receiver.wait(lambda: len(receiver.requests) >= 2)
    assert {g.body["type"] for g in receiver.requests} == {"message.queued"}
    items = (await http.get(f"/webhooks/{hook['id']}/deliveries",
                            headers=account.headers)).json()["data"]
    assert items[-1]["statusCode"] == 302 and items[-1]["error"] == "redirects are not followed"


async def test_a_slow_receiver_times_out_and_never_delays_another_endpoint(
        server: Server, http: httpx.AsyncClient, account: Account,
        make_account: Any, receiver: Receiver) -> None:
    async with running() as slow:
        slow.answer = lambda got: Reply(200, delay_s=5)
        other = await make_account("other@example.com")
        slow_hook = await subscribe(http, account, slow, ["message.queued"])
        await subscribe(http, other, receiver, ["message.queued"])
        for _ in range(20):  # more than the slow endpoint's share of the sender
            await send_sms(http, account.key, ttl=60)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        mid = (await send_sms(http, other.key, ttl=60)).json()["data"]["id"]
        await receiver.wait(lambda: receiver.statuses(mid) == ["queued"], timeout=5)
        assert time.monotonic() - started < 1.5
        await wait_for(lambda: _attempted(http, account, slow_hook["id"]), timeout=10,
                       what="a timed-out attempt")
        items = (await http.get(f"/webhooks/{slow_hook['id']}/deliveries",
                                headers=account.headers)).json()["data"]
        assert items[0]["statusCode"] is None and items[0]["error"] == "no answer within 2 s"


async def _attempted(http: httpx.AsyncClient, account: Account, webhook_id: str) -> bool:
    r = await http.get(f"/webhooks/{webhook_id}/deliveries", headers=account.headers)
    return bool(r.json()["data"])


async def test_one_message_s_events_are_never_attempted_out_of_order(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver) -> None:
    await subscribe(http, account, receiver, [f"message.{s}" for s in LIFECYCLE])
    seen: list[tuple[str, str]] = []

    def answer(got: Got) -> Reply:
        seen.append((got.body["data"]["id"], got.body["data"]["status"]))
        # Every first attempt fails: a later event overtaking would show.
        tries = sum(1 for s in seen if s == seen[-1])
        return Reply(503) if tries == 1 else Reply(200, delay_s=0.05)

    receiver.answer = answer
    mids = [await deliver_one(http, account, phone) for _ in range(3)]
    await receiver.wait(lambda: all(len(receiver.statuses(m)) == 5 for m in mids), timeout=20)
    for m in mids:
        attempted = [s for i, s in seen if i == m]
        assert attempted == [s for s in LIFECYCLE for _ in (0, 1)], attempted
        assert receiver.statuses(m) == LIFECYCLE


async def test_410_disables_the_endpoint_and_recover_sends_what_failed(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    receiver.answer = lambda got: Reply(410)
    first = (await send_sms(http, account.key, ttl=60)).json()["data"]["id"]
    await receiver.wait(lambda: len(receiver.requests) == 1)
    await wait_for(lambda: _disabled(http, account, hook["id"]), what="disabled")
    shown = (await http.get(f"/webhooks/{hook['id']}", headers=account.headers)).json()["data"]
    assert shown["disabledReason"] == "the endpoint answered 410 Gone"
    # While disabled nothing is written for it, and recover is refused.
    second = (await send_sms(http, account.key, ttl=60)).json()["data"]["id"]
    since = {"since": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()}
    r = await http.post(f"/webhooks/{hook['id']}/recover", json=since, headers=account.headers)
    assert r.status_code == 409
    receiver.answer = lambda got: Reply(200)
    r = await http.patch(f"/webhooks/{hook['id']}", json={"enabled": True},
                         headers=account.headers)
    assert r.json()["data"]["enabled"] is True and r.json()["data"]["disabledReason"] is None
    r = await http.post(f"/webhooks/{hook['id']}/recover", json=since, headers=account.headers)
    assert r.status_code == 202 and r.json()["data"] == {"recovered": 1}
    await receiver.wait(lambda: receiver.statuses(first) == ["queued"])
    await asyncio.sleep(0.4)
    assert receiver.statuses(second) == []


async def _disabled(http: httpx.AsyncClient, account: Account, webhook_id: str) -> bool:
    r = await http.get(f"/webhooks/{webhook_id}", headers=account.headers)
    return r.json()["data"]["enabled"] is False


async def test_five_days_without_a_2xx_disables_the_endpoint(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver,
        db: asyncpg.Connection) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    await db.execute("UPDATE webhooks SET failing_since = now() - interval '5 days 1 minute'"
                     " WHERE id = $1", uuid.UUID(hook["id"]))
    receiver.answer = lambda got: Reply(500)
    await send_sms(http, account.key, ttl=60)
    await wait_for(lambda: _disabled(http, account, hook["id"]), what="disabled")
    shown = (await http.get(f"/webhooks/{hook['id']}", headers=account.headers)).json()["data"]
    assert shown["disabledReason"] == "no 2xx answer for 5.0 days"
    assert len(receiver.requests) == 1


async def test_a_2xx_stops_the_failing_clock(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver,
        db: asyncpg.Connection) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    await db.execute("UPDATE webhooks SET failing_since = now() - interval '4 days'"
                     " WHERE id = $1", uuid.UUID(hook["id"]))
    await send_sms(http, account.key, ttl=60)
    await receiver.wait(lambda: len(receiver.delivered) == 1)
    await wait_for(lambda: _clock_stopped(db, hook["id"]), what="failing_since cleared")


async def _clock_stopped(db: asyncpg.Connection, webhook_id: str) -> bool:
    return await db.fetchval("SELECT failing_since IS NULL FROM webhooks WHERE id = $1",
                             uuid.UUID(webhook_id))  # type: ignore[no-any-return]


async def test_rotation_signs_with_both_secrets_for_a_day(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    old = hook["secret"]
    r = await http.post(f"/webhooks/{hook['id']}/rotate-secret", headers=account.headers)
    assert r.status_code == 200
    rotated = r.json()["data"]
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    until = dt.datetime.fromisoformat(rotated["previousSecretUntil"])
    assert dt.timedelta(hours=23) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=24)
    await send_sms(http, account.key, ttl=60)
    await receiver.wait(lambda: len(receiver.delivered) == 1)
    got = receiver.requests[0]
    assert len(got.signature.split(" ")) == 2
    for secret in (old, new):  # a receiver with either secret verifies it
        receiver.secrets = [secret]
        from standardwebhooks.webhooks import Webhook
        Webhook(secret).verify(got.raw, {"webhook-id": got.webhook_id,
                                         "webhook-timestamp": got.timestamp,
                                         "webhook-signature": got.signature})


async def test_test_event_goes_whatever_the_subscription_and_is_listed(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver, ["message.failed"])
    delivered = metrics.WEBHOOK_ATTEMPTS.labels("delivered")._value.get()
    r = await http.post(f"/webhooks/{hook['id']}/test", headers=account.headers)
    assert r.status_code == 202
    event_id = r.json()["data"]["eventId"]
    await receiver.wait(lambda: len(receiver.delivered) == 1)
    body = receiver.events()[0]
    assert body["type"] == "webhook.test" and body["data"] == {"webhookId": hook["id"]}
    assert receiver.requests[0].webhook_id == event_id and receiver.requests[0].verified
    await wait_for(lambda: _attempted(http, account, hook["id"]), what="the attempt recorded")
    items = (await http.get(f"/webhooks/{hook['id']}/deliveries",
                            headers=account.headers)).json()["data"]
    assert [(i["eventId"], i["type"], i["statusCode"]) for i in items] == \
        [(event_id, "webhook.test", 204)]
    assert metrics.WEBHOOK_ATTEMPTS.labels("delivered")._value.get() == delivered + 1


async def test_redeliver_sends_the_same_event_again(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    await subscribe(http, account, receiver, ["message.queued"])
    await send_sms(http, account.key, ttl=60)
    await receiver.wait(lambda: len(receiver.requests) == 1)
    first = receiver.requests[0]
    r = await http.post(f"/events/{first.webhook_id}/redeliver", headers=account.headers)
    assert r.status_code == 202, r.text
    await receiver.wait(lambda: len(receiver.requests) == 2)
    again = receiver.requests[1]
    assert again.webhook_id == first.webhook_id and again.raw == first.raw and again.verified


async def test_deliveries_are_keyset_paginated(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    for _ in range(5):
        await send_sms(http, account.key, ttl=60)
    await receiver.wait(lambda: len(receiver.delivered) == 5)

    async def all_recorded() -> bool:  # the receiver has each 200 before its commit
        r = await http.get(f"/webhooks/{hook['id']}/deliveries?limit=10",
                           headers=account.headers)
        return len(r.json()["data"]) == 5
    await wait_for(all_recorded, what="the five attempts recorded")
    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        r = await http.get(f"/webhooks/{hook['id']}/deliveries?limit=2&cursor={cursor}",
                           headers=account.headers)
        page = r.json()
        seen += [i["eventId"] for i in page["data"]]
        if "nextCursor" not in page:
            break
        cursor = page["nextCursor"]
    assert sorted(seen) == sorted(receiver.delivered) and len(seen) == 5
    ats = [i["at"] for i in (await http.get(f"/webhooks/{hook['id']}/deliveries",
                                            headers=account.headers)).json()["data"]]
    assert ats == sorted(ats, reverse=True)


async def test_webhook_routes_need_webhooks_write_and_stay_in_their_account(
        server: Server, http: httpx.AsyncClient, account: Account, make_account: Any,
        receiver: Receiver) -> None:
    hook = await subscribe(http, account, receiver, ["message.queued"])
    reader = await account.make_key(["messages:read", "messages:send", "devices:write"])
    r = await http.get("/webhooks", headers={"x-api-key": reader})
    assert r.status_code == 403
    other = await make_account("stranger@example.com")
    for method, path in (("GET", f"/webhooks/{hook['id']}"),
                         ("PATCH", f"/webhooks/{hook['id']}"),
                         ("DELETE", f"/webhooks/{hook['id']}"),
                         ("POST", f"/webhooks/{hook['id']}/rotate-secret"),
                         ("POST", f"/webhooks/{hook['id']}/test"),
                         ("GET", f"/webhooks/{hook['id']}/deliveries")):
        r = await http.request(method, path, headers=other.headers, json={})
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["message"] == "Webhook not found"
    r = await http.post(f"/webhooks/{hook['id']}/recover", headers=other.headers,
                        json={"since": "2026-01-01T00:00:00Z"})
    assert r.status_code == 404
    assert (await http.get("/webhooks", headers=other.headers)).json()["data"] == []
    await send_sms(http, account.key, ttl=60)
    await receiver.wait(lambda: len(receiver.requests) == 1)
    r = await http.post(f"/events/{receiver.requests[0].webhook_id}/redeliver",
                        headers=other.headers)
    assert r.status_code == 404 and r.json()["message"] == "Event not found"
    r = await http.delete(f"/webhooks/{hook['id']}", headers=account.headers)
    assert r.status_code == 204
    assert (await http.get(f"/webhooks/{hook['id']}", headers=account.headers)).status_code == 404


@pytest.mark.parametrize(("body", "message"), [
    ({"url": "ftp://example.com/x", "events": ["*"]}, "url must start with http:// or https://"),
    ({"url": "https://", "events": ["*"]}, "url must have a host"),
    ({"url": "https://example.com/x", "events": []}, "events: expected array of length >= 1"),
    ({"url": "https://example.com/x", "events": ["message.lost"]}, "unknown event type(s)"),
    ({"url": "https://example.com/x#frag", "events": ["*"]}, "url must not have a fragment"),
    ({"events": ["*"]}, "Missing field url"),
])
async def test_bad_webhooks_are_refused_with_a_reason(
        server: Server, http: httpx.AsyncClient, account: Account, body: dict[str, Any],
        message: str) -> None:
    r = await http.post("/webhooks", json=body, headers=account.headers)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]


async def test_an_account_has_at_most_20_webhooks(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    for _ in range(20):
        await subscribe(http, account, receiver, ["message.failed"])
    r = await http.post("/webhooks", headers=account.headers,
                        json={"url": receiver.url, "events": ["*"]})
    assert r.status_code == 409


async def test_the_routes_are_in_the_openapi_document(server: Server,
                                                      http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    for path, method in (("/webhooks", "post"), ("/webhooks", "get"),
                         ("/webhooks/{webhook_id}", "patch"),
                         ("/webhooks/{webhook_id}", "delete"),
                         ("/webhooks/{webhook_id}/rotate-secret", "post"),
                         ("/webhooks/{webhook_id}/deliveries", "get"),
                         ("/webhooks/{webhook_id}/test", "post"),
                         ("/webhooks/{webhook_id}/recover", "post"),
                         ("/events/{event_id}/redeliver", "post")):
        assert method in paths[path], (path, method)


async def test_a_phone_coming_and_going_fires_device_online_and_offline(
        server: Server, http: httpx.AsyncClient, account: Account, phone: PhoneFactory,
        receiver: Receiver) -> None:
    await subscribe(http, account, receiver, ["device.online", "device.offline"])
    device = await account.make_device("Pixel")
    p = await phone(device, health={"battery": 81, "charging": True, "signal": 3})
    await receiver.wait(lambda: len(receiver.events()) == 1)
    online = receiver.events()[0]
    shown = (await http.get("/devices", headers=account.headers)).json()["data"][0]
    assert online["type"] == "device.online"
    assert online["data"] == {**shown, "lastSeen": online["data"]["lastSeen"]}
    assert online["data"]["online"] is True and online["data"]["health"]["battery"] == 81
    await p.close()
    await receiver.wait(lambda: len(receiver.events()) == 2)
    offline = receiver.events()[1]
    assert offline["type"] == "device.offline" and offline["data"]["online"] is False
    assert offline["data"]["id"] == device.id and offline["data"]["deviceName"] == "Pixel"
    assert all(g.verified for g in receiver.requests)


async def test_webhooks_are_listed_oldest_first_a_page_at_a_time(
        server: Server, http: httpx.AsyncClient, account: Account, receiver: Receiver) -> None:
    made = [(await subscribe(http, account, receiver, ["message.failed"]))["id"]
            for _ in range(3)]
    first = (await http.get("/webhooks?limit=2", headers=account.headers)).json()
    assert [w["id"] for w in first["data"]] == made[:2]
    rest = (await http.get(f"/webhooks?limit=2&cursor={first['nextCursor']}",
                           headers=account.headers)).json()
    assert [w["id"] for w in rest["data"]] == made[2:] and "nextCursor" not in rest
    r = await http.get("/webhooks?cursor=nonsense", headers=account.headers)
    assert r.status_code == 400
