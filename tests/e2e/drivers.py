"""A phone, in the delivery contract's own words (contract section 5),
whatever wire it speaks.

tests/e2e/test_contract.py drives phones only through `PhoneDriver`, and the
`driver` fixture (tests/e2e/conftest.py) hands it one per transport, as
uvicorn's `ws_protocol_cls` runs every WebSocket test against every
implementation. `WsDriver` speaks our WebSocket protocol (section 4) through
the conftest's raw `Phone`; the SMS Gateway app's HTTP+SSE mobile API
(section 8, shared/SMSGATE.md) comes as one more class of the same shape.

The interface says what a phone *does* and what it is *told*, never how:
- "The broker stored it" is confirmed by the call itself: `ack` and
  `report` return only once the broker has taken the report (a `receipt`
  over WebSocket; the PATCH's 2xx for an app that gets no receipts), and
  fail if it was refused.
- A refusal is the `*_refused` twin: the broker must not take the report.
  Over WebSocket that is an `error` or a `cancel` frame, never a receipt; a
  transport that answers refusals like any other request (SMSGATE.md: unknown
  ids get 2xx) confirms the answer came, and the test reads the state through
  the API.
- `pending` in `connect` is what the phone still holds when it comes back;
  a transport whose phone never says so (the broker lists the jobs) ignores it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from tests.e2e.conftest import WAIT_S, Account, Device, Phone, PhoneFactory, wait_for

# What a phone reports after its ack: what the carrier said.
CarrierReport = Literal["sent", "delivered", "failed"]


@dataclass(frozen=True)
class Job:
    """A job the broker offered the phone: send `message` to `recipient`."""

    id: str
    recipient: str
    message: str


class PhoneDriver(Protocol):
    """One registered phone of one account, connected or not."""

    @property
    def device(self) -> Device: ...

    async def connect(self, pending: Sequence[str] = ()) -> None:
        """Connect and be online; `pending`: job ids the phone still holds."""

    async def disconnect(self) -> None:
        """Go away; returns once the broker shows the device offline."""

    async def close(self) -> None:
        """Teardown: drop whatever is open, waiting for nothing."""

    async def next_job(self, timeout: float = WAIT_S) -> Job:
        """The next job the broker offers (again, after a reconnect)."""

    async def ack(self, job_id: str) -> None:
        """Take the job; returns once the broker stored `sending`, the
        go-ahead to send the SMS."""

    async def report(self, job_id: str, status: CarrierReport, error: str | None = None) -> None:
        """Report what the carrier said; returns once the broker stored it."""

    async def ack_refused(self, job_id: str) -> None:
        """Ack a job that is not (or no longer) this phone's to send: the
        broker answers, and never with the go-ahead."""

    async def report_refused(self, job_id: str, status: CarrierReport,
                             error: str | None = None) -> None:
        """A report the broker must not take: it answers, and stores nothing."""

    async def expect_cancel(self, job_id: str, timeout: float = WAIT_S) -> str | None:
        """The broker told the phone to drop `job_id` unsent; the reason, or
        None where the transport names none."""

    async def expect_nothing(self, within: float = 0.3) -> None:
        """No job, cancel or other word from the broker within `within` s."""


# --- our WebSocket protocol (contract section 4) ----------------------------------------


Frame = dict[str, Any]


class WsDriver:
    """`PhoneDriver` over the raw `Phone` of tests/e2e/conftest.py.

    Frames arrive in whatever order the broker writes them (after a `hello`
    with `pending`, its sends and cancels interleave), so each expectation
    takes the first frame that answers it and keeps the rest in `inbox` for
    the next one, as a phone keyed by job id would."""

    def __init__(self, device: Device, account: Account, http: httpx.AsyncClient,
                 phone: PhoneFactory) -> None:
        self._device = device
        self.account = account
        self.http = http
        self._open_phone = phone
        self.phone: Phone | None = None
        self.inbox: list[Frame] = []

    @property
    def device(self) -> Device:
        return self._device

    def _connected(self) -> Phone:
        assert self.phone is not None, f"{self.device.name} is not connected"
        return self.phone

    async def connect(self, pending: Sequence[str] = ()) -> None:
        assert self.phone is None, f"{self.device.name} is connected already"
        self.phone = await self._open_phone(self.device, pending=list(pending) or None)

    async def disconnect(self) -> None:
        await self.close()
        await wait_for(self._offline, what=f"{self.device.name} offline")

    async def close(self) -> None:
        if self.phone is not None:
            await self.phone.close()
        self.phone = None
        self.inbox.clear()  # what the old socket still held is gone with it

    async def _offline(self) -> bool:
        r = await self.http.get("/devices", headers=self.account.headers)
        assert r.status_code == 200, r.text
        return not any(d["id"] == self.device.id and d["online"] for d in r.json()["data"])

    async def _take(self, wanted: Callable[[Frame], bool], what: str, timeout: float,
                    *, since: int = 0) -> Frame:
        """The first frame from `inbox[since:]` on, or from the socket, that
        `wanted` accepts; the others stay in `inbox`."""
        for i, frame in enumerate(self.inbox[since:], start=since):
            if wanted(frame):
                return self.inbox.pop(i)
        phone = self._connected()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            try:
                frame = await phone.recv(max(left, 0.0))
            except TimeoutError:
                raise AssertionError(f"{self.device.name}: no {what} within {timeout} s;"
                                     f" got {self.inbox}") from None
            if wanted(frame):
                return frame
            self.inbox.append(frame)

    async def _ask(self, frame: Frame, what: str) -> Frame:
        """Send `frame`; its answer: the first receipt, error or cancel for
        its id that came after it."""
        since = len(self.inbox)  # frames already in were written before ours
        await self._connected().send(frame)

        def answers(f: Frame) -> bool:
            return f.get("id") == frame["id"] and f["type"] in {"receipt", "error", "cancel"}
        return await self._take(answers, f"answer to {what}", WAIT_S, since=since)

    async def next_job(self, timeout: float = WAIT_S) -> Job:
        frame = await self._take(lambda f: f["type"] == "send", "job", timeout)
        assert set(frame) == {"type", "id", "recipient", "message"}, frame
        return Job(id=frame["id"], recipient=frame["recipient"], message=frame["message"])

    async def _stored(self, frame: Frame, status: str) -> None:
        answer = await self._ask(frame, f"{frame['type']} {status}")
        assert answer == {"type": "receipt", "id": frame["id"], "status": status}, answer

    async def _refused(self, frame: Frame) -> None:
        answer = await self._ask(frame, frame["type"])
        assert answer["type"] in {"error", "cancel"}, answer

    @staticmethod
    def _report_frame(job_id: str, status: CarrierReport, error: str | None) -> Frame:
        frame: Frame = {"type": "status", "id": job_id, "status": status}
        if error is not None:
            frame["error"] = error
        return frame

    async def ack(self, job_id: str) -> None:
        await self._stored({"type": "ack", "id": job_id}, "sending")

    async def report(self, job_id: str, status: CarrierReport, error: str | None = None) -> None:
        await self._stored(self._report_frame(job_id, status, error), status)

    async def ack_refused(self, job_id: str) -> None:
        await self._refused({"type": "ack", "id": job_id})

    async def report_refused(self, job_id: str, status: CarrierReport,
                             error: str | None = None) -> None:
        await self._refused(self._report_frame(job_id, status, error))

    async def expect_cancel(self, job_id: str, timeout: float = WAIT_S) -> str | None:
        frame = await self._take(lambda f: f["type"] == "cancel" and f.get("id") == job_id,
                                 f"cancel of {job_id}", timeout)
        reason = frame.get("reason")
        assert isinstance(reason, str) and reason, frame
        return reason

    async def expect_nothing(self, within: float = 0.3) -> None:
        assert not self.inbox, f"{self.device.name}: unexpected frames {self.inbox}"
        await self._connected().nothing(within)

