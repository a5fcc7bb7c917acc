"""What `AppSim` makes of the broker's answers and when it asks again, and
the one call it makes to another URL than the mobile API: the signed
`sms:received` webhook (shared/SMSGATE.md 8), as the app's webhook worker
sends it."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any, Final

import httpx
import msgspec

from broker.device_sim import mobile
from broker.device_sim.app import AppPhone, Forward
from broker.device_sim.phone import Event, log

RETRY_FIRST_S: Final = 0.25
RETRY_MAX_S: Final = 2.0


def retry_s(attempt: int) -> float:
    return float(min(RETRY_FIRST_S * 2 ** min(attempt, 16), RETRY_MAX_S))


def refused(answer: httpx.Response) -> bool:
    """A 4xx that asking again would not change; 408 and 429 (the broker's
    throttles) are asked again, as the app's workers retry them."""
    return 400 <= answer.status_code < 500 and answer.status_code not in (408, 429)


def detail(answer: httpx.Response) -> str:
    """The status and the error shape's `message` (else the body's start)."""
    try:
        message = msgspec.json.decode(answer.content, type=dict[str, Any]).get("message")
    except msgspec.DecodeError:  # not JSON, or not an object
        message = None
    return f"{answer.status_code} {message or answer.content[:200].decode(errors='replace')}"


def now() -> dt.datetime:
    return dt.datetime.now().astimezone()  # the phone's own time zone


async def forward(client: httpx.AsyncClient, phone: AppPhone, sms: Forward,
                  emit: Callable[[Event], None]) -> None:
    """POST one webhook delivery, signed anew at each attempt, without the
    device token (the app sends none); any answer but a 2xx is tried again,
    every 0.25 s doubling to 2 s (the app: 5 s doubling), at most
    `webhooks.retry_count` times."""
    attempt = 0
    while True:
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json; charset=UTF-8",
                   "Accept": "application/json", "X-Timestamp": stamp,
                   "X-Signature": mobile.sign(phone.signing_key(), sms.body, stamp)}
        try:
            answer: httpx.Response | None = await client.post(sms.url, content=sms.body,
                                                              headers=headers)
        except httpx.HTTPError as err:
            log.info("webhook failed", extra={"url": sms.url, "error": str(err)})
            answer = None
        if answer is not None and answer.is_success:
            phone.on_forwarded(sms.id)
            break
        attempt += 1
        why = detail(answer) if answer is not None else "no answer"
        if attempt >= phone.retry_count():
            phone.on_forward_dropped(sms.id, why)
            break
        emit(Event("refused", sms.message_id, f"sms:received webhook: {why}"))
        await asyncio.sleep(retry_s(attempt))
    for event in phone.events:
        emit(event)
    phone.events.clear()
