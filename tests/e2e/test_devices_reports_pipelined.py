"""A phone's reports share commits (issue 5): the broker reads a phone's next
frame without waiting for the last report's commit, and still answers each
report with its receipt, in the order the reports came.

Real uvicorn, real `websockets` client, PostgreSQL; the commits are counted
by the `smsdora_report_batch_size` histogram on /metrics."""

from __future__ import annotations

import httpx
import pytest

from broker.settings import Settings
from tests.e2e.conftest import Account, PhoneFactory, send_sms
from tests.e2e.test_api_ops import METRICS, METRICS_TOKEN, samples, value

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def broker_settings(broker_settings: Settings) -> Settings:
    return broker_settings.with_(metrics_token=METRICS_TOKEN)

JOBS = 30


async def test_reports_sent_in_a_row_share_commits_and_keep_their_order(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    p = await phone(await account.make_device(send_rate=0))
    ids = []
    for _ in range(JOBS):
        r = await send_sms(http, account.key)
        assert r.status_code == 201, r.text
        ids.append((await p.expect("send"))["id"])
    before = samples((await http.get("/metrics", headers=METRICS)).text)

    for mid in ids:  # every ack at once, as a phone that works through its outbox
        await p.send({"type": "ack", "id": mid})
    answers = [await p.recv() for _ in ids]
    assert answers == [{"type": "receipt", "id": mid, "status": "sending"} for mid in ids]

    for mid in ids:
        await p.send({"type": "status", "id": mid, "status": "sent"})
        await p.send({"type": "status", "id": mid, "status": "delivered"})
    answers = [await p.recv() for _ in range(2 * JOBS)]
    assert answers == [{"type": "receipt", "id": mid, "status": status}
                       for mid in ids for status in ("sent", "delivered")]

    after = samples((await http.get("/metrics", headers=METRICS)).text)
    reports = (value(after, "smsdora_report_batch_size_sum")
               - value(before, "smsdora_report_batch_size_sum"))
    commits = (value(after, "smsdora_report_batch_size_count")
               - value(before, "smsdora_report_batch_size_count"))
    assert reports == 3 * JOBS
    # One commit per report if the reader waited for each; shared commits here.
    assert commits < JOBS, commits


async def test_a_report_refused_at_once_is_answered_after_the_earlier_ones(
        http: httpx.AsyncClient, account: Account, phone: PhoneFactory) -> None:
    p = await phone(await account.make_device(send_rate=0))
    ids = []
    for _ in range(5):
        assert (await send_sms(http, account.key)).status_code == 201
        ids.append((await p.expect("send"))["id"])
    for mid in ids:
        await p.send({"type": "ack", "id": mid})
    await p.send({"type": "ack", "id": "not-a-uuid"})  # refused without the database
    answers = [await p.recv() for _ in range(len(ids) + 1)]
    assert answers[:-1] == [{"type": "receipt", "id": mid, "status": "sending"} for mid in ids]
    assert answers[-1]["type"] == "error" and answers[-1]["code"] == "not_yours"
    assert answers[-1]["id"] == "not-a-uuid"
