"""broker/transports/ws/channel.py: the frames and close codes our WebSocket
protocol uses to say what the delivery engine means (pure).

The expected frames and codes are written from protocol/README.md, the
phone developer's page, not from the module's tables. `WsChannel` is driven
against a stand-in for Starlette's `WebSocket` that records what it is asked
to send and close: the adapter's own logic (closed channels write nothing,
one close), not the socket, is under test; real sockets are tests/e2e/.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket, WebSocketDisconnect

from broker.delivery.channel import NOT_STORED, Cancel, CloseReason, Job, Receipt, Refusal
from broker.transports.ws import channel as ws_channel
from broker.transports.ws.channel import WsChannel, answer_frame, error_frame
from protocol import lifecycle

pytestmark = pytest.mark.timeout(10)

README = Path(__file__).resolve().parents[2] / "protocol" / "README.md"
MID = "3f2c0a9e-0d0b-4a8e-9a55-2b5f7c1c9e01"


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end if end != -1 else None]


def readme_codes(title: str, pattern: str) -> set[str]:
    """The first column of a table of protocol/README.md."""
    return set(re.findall(pattern, readme_section(title), flags=re.MULTILINE))


CLOSE_CODES = {int(c) for c in readme_codes("### Close codes", r"^\| (\d{4}) \|")}
ERROR_CODES = readme_codes("### Error codes", r"^\| `([a-z_]+)` \|")


def as_json(frame: bytes) -> dict[str, Any]:
    decoded = json.loads(frame)
    assert isinstance(decoded, dict)
    return decoded


# --- answers to a phone's report, as frames ---------------------------------


def test_the_readme_tables_were_found() -> None:
    assert {4000, 1008, 1012, 1013} <= CLOSE_CODES
    assert {"not_yours", "not_acked", "refused", "unavailable"} <= ERROR_CODES


def test_a_receipt_is_a_receipt_frame_with_the_jobs_status() -> None:
    assert as_json(answer_frame(MID, Receipt("sending"))) == {
        "type": "receipt", "id": MID, "status": "sending"}


def test_a_cancel_is_a_cancel_frame_with_its_reason() -> None:
    assert as_json(answer_frame(MID, Cancel("expired"))) == {
        "type": "cancel", "id": MID, "reason": "expired"}


def test_not_acked_is_the_readmes_error_frame() -> None:
    # protocol/README.md section 2, the `error` example, word for word.
    assert as_json(answer_frame(MID, Refusal(lifecycle.REFUSED_NOT_ACKED))) == {
        "type": "error", "code": "not_acked", "id": MID,
        "detail": "job was not acked: ack it and wait for the receipt before sending"}


@pytest.mark.parametrize("code", sorted({
    o.code for o in lifecycle.TABLE.values() if o.kind is lifecycle.Kind.REFUSE}))
def test_every_refusal_of_the_lifecycle_is_an_error_frame_the_readme_lists(code: str) -> None:
    frame = as_json(answer_frame(MID, Refusal(code)))
    assert frame["type"] == "error" and frame["id"] == MID
    assert frame["code"] == code and code in ERROR_CODES
    # A sentence for the phone's log, not the code repeated (the fallback).
    assert frame["detail"] and frame["detail"] != code


@pytest.mark.parametrize(("code", "words"), [
    (lifecycle.REFUSED_NOT_YOURS, "no such job"),
    (lifecycle.REFUSED_FINAL, "not allowed"),
])
def test_each_refusal_says_its_own_reason(code: str, words: str) -> None:
    assert words in as_json(answer_frame(MID, Refusal(code)))["detail"]


def test_a_report_not_stored_is_unavailable_so_the_phone_sends_it_again() -> None:
    frame = as_json(answer_frame(MID, NOT_STORED))
    assert frame["type"] == "error" and frame["code"] == "unavailable" and frame["id"] == MID
    assert "retry" in frame["detail"]


def test_an_error_about_no_job_carries_no_id() -> None:
    # "`id` is there when the frame was about a job."
    assert as_json(error_frame("bad_json", "not JSON")) == {
        "type": "error", "code": "bad_json", "detail": "not JSON"}


# --- close codes ------------------------------------------------------------


def test_every_close_reason_has_a_close_code() -> None:
    assert set(ws_channel._CLOSE_CODES) == set(CloseReason)


@pytest.mark.parametrize(("reason", "code"), [
    (CloseReason.REPLACED, 4000),  # "replaced by a newer connection with the same token"
    (CloseReason.DEACTIVATED, 1008),  # "or the device was deactivated"
    (CloseReason.RESTARTING, 1012),  # "the broker is restarting"
    (CloseReason.UNAVAILABLE, 1013),  # "the broker's database was unavailable"
    (CloseReason.INTERNAL_ERROR, 1011),  # RFC 6455 7.4.1: "an unexpected condition"
])
def test_close_codes_are_the_readmes(reason: CloseReason, code: int) -> None:
    assert ws_channel._CLOSE_CODES[reason] == code
    assert code in CLOSE_CODES


# --- WsChannel against a recording WebSocket --------------------------------


class FakeWebSocket:
    """What WsChannel uses of Starlette's WebSocket: `send` and `close`."""

    def __init__(self, fail: BaseException | None = None, stall: bool = False) -> None:
        self.fail = fail
        self.stall = stall
        self.sent: list[dict[str, Any]] = []
        self.closes: list[tuple[int, str]] = []

    async def send(self, message: dict[str, Any]) -> None:
        if self.stall:
            await asyncio.Event().wait()  # a phone that stopped reading
        if self.fail is not None:
            raise self.fail
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes.append((code, reason or ""))

    def frames(self) -> list[dict[str, Any]]:
        assert all(m["type"] == "websocket.send" and set(m) == {"type", "text"} for m in self.sent)
        return [as_json(m["text"].encode()) for m in self.sent]


def channel_of(ws: FakeWebSocket) -> WsChannel:
    return WsChannel(cast(WebSocket, ws))


async def test_offer_writes_a_send_frame_with_the_job() -> None:
    ws = FakeWebSocket()
    ok = await channel_of(ws).offer(Job(id=MID, recipient="+212600000000",
                                        message="Your code is 4829"))
    assert ok is True
    assert ws.frames() == [{"type": "send", "id": MID, "recipient": "+212600000000",
                            "message": "Your code is 4829"}]


async def test_cancel_and_answer_write_their_frames_in_order() -> None:
    ws = FakeWebSocket()
    channel = channel_of(ws)
    assert await channel.cancel(MID, "reassigned") is True
    assert await channel.answer(MID, Receipt("sent")) is True
    assert ws.frames() == [{"type": "cancel", "id": MID, "reason": "reassigned"},
                           {"type": "receipt", "id": MID, "status": "sent"}]


@pytest.mark.parametrize("reason", list(CloseReason))
async def test_close_uses_the_mapped_code_once(reason: CloseReason) -> None:
    ws = FakeWebSocket()
    channel = channel_of(ws)
    await channel.close(reason)
    await channel.close(reason)
    await channel.close(CloseReason.INTERNAL_ERROR)
    assert ws.closes == [(ws_channel._CLOSE_CODES[reason], reason.value)]


async def test_a_closed_channel_writes_nothing_and_says_so() -> None:
    ws = FakeWebSocket()
    channel = channel_of(ws)
    await channel.close(CloseReason.RESTARTING)
    assert await channel.offer(Job(id=MID, recipient="+1", message="m")) is False
    assert await channel.cancel(MID, "done") is False
    assert await channel.answer(MID, Receipt("sending")) is False
    assert ws.sent == []


@pytest.mark.parametrize("fail", [RuntimeError("closed"), OSError("reset"),
                                  WebSocketDisconnect(1006)])
async def test_a_socket_closed_under_the_channel_ends_it(fail: BaseException) -> None:
    ws = FakeWebSocket(fail=fail)
    channel = channel_of(ws)
    assert await channel.offer(Job(id=MID, recipient="+1", message="m")) is False
    assert channel.closed
    ws.fail = None  # were it written again, it would show
    assert await channel.answer(MID, Receipt("sending")) is False
    assert ws.sent == []
    await channel.close(CloseReason.RESTARTING)
    assert ws.closes == []  # already gone: nothing to close


async def test_a_phone_that_does_not_read_is_closed_with_try_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_channel, "SEND_TIMEOUT_S", 0.05)
    ws = FakeWebSocket(stall=True)
    channel = channel_of(ws)
    assert await channel.offer(Job(id=MID, recipient="+1", message="m")) is False
    assert channel.closed
    await asyncio.gather(*ws_channel._closing)  # the close runs beside the caller
    assert ws.closes == [(1013, "not reading")]
    assert await channel.answer(MID, Receipt("sending")) is False
