"""No secret in any log line: every record of a whole flow (keys, devices,
sends, a refused token, a rejected key, errors) is formatted as the broker
formats it, and no API key, device token or secret part of one appears."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from broker import keys
from broker.ops import logs
from tests.e2e.conftest import Account, PhoneFactory, Server, logging_to, send_sms

CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    # The test's own clients (httpx, the websockets client) log what they
    # send at DEBUG; they are not the broker, whose lines are what we check.
    handler.addFilter(lambda r: not r.name.startswith(CLIENT_LOGGERS))
    with logging_to(handler, logging.getLogger()):
        yield out


async def test_a_full_flow_logs_no_secret(log_text: io.StringIO, server: Server,
                                          http: httpx.AsyncClient, account: Account,
                                          phone: PhoneFactory) -> None:
    secrets: list[str] = [account.key]
    r = await http.post("/devices", json={"name": "Phone"}, headers=account.headers)
    assert r.status_code == 201
    token = r.json()["data"]["token"]
    secrets.append(token)
    from tests.e2e.conftest import Device
    p = await phone(Device(id=r.json()["data"]["id"], name="Phone", token=token))
    sent = await send_sms(http, account.key)
    mid = sent.json()["data"]["id"]
    await p.expect("send")
    await p.ask({"type": "ack", "id": mid})
    await p.ask({"type": "status", "id": mid, "status": "delivered"})
    # Refused credentials: a wrong secret behind a real prefix, both kinds.
    wrong_key = account.key[:15] + "x" * 43
    wrong_token = token[:16] + "y" * 43
    secrets += [wrong_key, wrong_token]
    assert (await send_sms(http, wrong_key)).status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        async with connect(server.ws_url,
                           additional_headers={"Authorization": f"Bearer {wrong_token}"}):
            pass
    assert (await http.get("/messages/nope", headers={"Authorization": f"Bearer {account.key}"})
            ).status_code == 404
    await p.close()

    text = log_text.getvalue()
    assert text.count("\n") >= 5, "the flow should have logged something"
    for secret in secrets:
        assert keys.parse_prefix(secret.split("_")[0], secret) is not None
        secret_part = secret.split("_", 2)[2]
        leaks = [line for line in text.splitlines() if secret_part in line]
        assert not leaks, f"a secret reached the log: {leaks[:2]}"
