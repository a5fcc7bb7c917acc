"""A phone, in the delivery contract's own words (contract section 5),
whatever wire it speaks.

tests/e2e/test_contract.py drives phones only through `PhoneDriver`, and the
`driver` fixture (tests/e2e/conftest.py) hands it one per transport, as
uvicorn's `ws_protocol_cls` runs every WebSocket test against every
implementation. `WsDriver` speaks our WebSocket protocol (section 4) through
the conftest's raw `Phone`; `SmsGateDriver` is the SMS Gateway for Android
app on its HTTP+SSE mobile API (section 8, shared/SMSGATE.md) through
tests/e2e/smsgate_app.py.

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

Two rules of the contract itself differ by transport, and each driver says
which of them its phones follow, so that a test branches on the rule and
never on the transport's name:
- `holds_listed_jobs`: a job offered to the phone is taken (the SMS Gateway
  app sends what it has listed, with no go-ahead to wait for): it never
  leaves the phone without the phone's confirmation of a cancel
  (`confirm_cancel`), however long it stays away (section 8). False: the
  phone sends only after its ack's receipt, so a job never acked moves to
  another phone once its phone has been away past the reassign delay, and
  the phone is cancelled if it comes back holding it (section 5).
- `redelivers_taken_jobs`: a job in `sending` is offered again after a
  reconnect (WebSocket: the phone may have lost it with the socket). False:
  the phone keeps its own jobs and is offered nothing again; its later
  reports are taken all the same.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from tests.e2e.conftest import WAIT_S, Account, Device, Phone, PhoneFactory, wait_for
from tests.e2e.smsgate_app import App, Event, EventStream, register

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

    holds_listed_jobs: bool
    redelivers_taken_jobs: bool

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

    async def confirm_cancel(self, job_id: str) -> None:
        """The phone dropped the cancelled job unsent and says so, where its
        transport has a word for that (`holds_listed_jobs`); returns once the
        broker took it."""

    async def expect_nothing(self, within: float = 0.3) -> None:
        """No job, cancel or other word from the broker within `within` s."""


async def device_offline(http: httpx.AsyncClient, account: Account, device: Device) -> bool:
    """`GET /devices` shows `device` offline (or not at all)."""
    r = await http.get("/devices", headers=account.headers)
    assert r.status_code == 200, r.text
    return not any(d["id"] == device.id and d["online"] for d in r.json()["data"])


# --- our WebSocket protocol (contract section 4) ----------------------------------------


Frame = dict[str, Any]


class WsDriver:
    """`PhoneDriver` over the raw `Phone` of tests/e2e/conftest.py.

    Frames arrive in whatever order the broker writes them (after a `hello`
    with `pending`, its sends and cancels interleave), so each expectation
    takes the first frame that answers it and keeps the rest in `inbox` for
    the next one, as a phone keyed by job id would."""

    holds_listed_jobs = False
    redelivers_taken_jobs = True

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
        await wait_for(lambda: device_offline(self.http, self.account, self.device),
                       what=f"{self.device.name} offline")

    async def close(self) -> None:
        if self.phone is not None:
            await self.phone.close()
        self.phone = None
        self.inbox.clear()  # what the old socket still held is gone with it

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

    async def confirm_cancel(self, job_id: str) -> None:
        pass  # a `cancel` frame is the end of it: the phone drops the job

    async def expect_nothing(self, within: float = 0.3) -> None:
        assert not self.inbox, f"{self.device.name}: unexpected frames {self.inbox}"
        await self._connected().nothing(within)



# --- the SMS Gateway for Android app's mobile API (contract section 8) --------------------

# The app's states for our reports (SMSGATE.md 6.11).
_APP_STATES: dict[CarrierReport, str] = {"sent": "Sent", "delivered": "Delivered",
                                         "failed": "Failed"}


class SmsGateDriver:
    """`PhoneDriver` as the SMS Gateway app behaves (SMSGATE.md 5, 6.7, 6.8):
    it opens `GET /events` and lists its jobs at once; it lists again on
    each `MessageEnqueued`; every `Pending` item it lists is a job offered
    (and, for the broker, taken: the app sends what it listed); a
    `MessageCancelled` or a `Cancelling` item is a cancel. Its reports are
    PATCHes, whose 2xx is all the app ever hears back: `ack` and `report`
    check through the API that the broker took them.

    Offers and cancels are kept until an expectation takes them, as
    `WsDriver`'s inbox; both are counted since the last `connect` (the app
    sends each job once; a cancel it was told of twice is one cancel)."""

    holds_listed_jobs = True
    redelivers_taken_jobs = False

    def __init__(self, app: App, device: Device, account: Account,
                 http: httpx.AsyncClient) -> None:
        self.app = app
        self._device = device
        self.account = account
        self.http = http
        self.stream: EventStream | None = None
        self.offered: list[Job] = []  # listed Pending, not yet handed out by next_job
        self.cancels: list[str] = []  # told to drop, not yet taken by expect_cancel
        self.others: list[Event] = []  # events no expectation asked for
        self._handed: set[str] = set()
        self._told: set[str] = set()
        self._recipients: dict[str, str] = {}  # the app keeps what it listed

    @classmethod
    async def register(cls, account: Account, http: httpx.AsyncClient, name: str,
                       send_rate: int) -> SmsGateDriver:
        """Registered as the app's "Sign Up" does, with the account's key;
        then the device's send rate (read when the device comes online)."""
        app = await register(http, account.key, name)
        await account.db.execute("UPDATE devices SET send_rate = $2 WHERE id = $1",
                                 uuid.UUID(app.id), send_rate)
        return cls(app, Device(id=app.id, name=name, token=app.token), account, http)

    @property
    def device(self) -> Device:
        return self._device

    def _connected(self) -> EventStream:
        assert self.stream is not None, f"{self.device.name} is not connected"
        return self.stream

    async def connect(self, pending: Sequence[str] = ()) -> None:
        # `pending`: the app never says what it holds; the broker lists it.
        assert self.stream is None, f"{self.device.name} is connected already"
        self.stream = await self.app.open_events()
        # Written once the device is online, first on a device's first stream.
        first = [(await self.stream.next()).name for _ in range(2)]
        assert first == ["WebhooksUpdated", "SettingsUpdated"], first
        await self._list()  # onOpen: PullMessagesWorker, at once

    async def disconnect(self) -> None:
        await self.close()
        await wait_for(lambda: device_offline(self.http, self.account, self.device),
                       what=f"{self.device.name} offline")

    async def close(self) -> None:
        await self.app.close_events()
        self.stream = None
        self.offered.clear()
        self.cancels.clear()
        self.others.clear()
        self._handed.clear()
        self._told.clear()

    # --- what the app hears ------------------------------------------------------

    def _cancelled(self, job_id: str) -> None:
        if job_id not in self._told:
            self._told.add(job_id)
            self.cancels.append(job_id)
        self.offered = [j for j in self.offered if j.id != job_id]

    async def _list(self) -> None:
        """`GET /message`, as `GatewayService.processMessage` reads it."""
        for item in await self.app.list():
            mid = item["id"]
            if item.get("state") == "Cancelling":
                self._cancelled(mid)
                continue
            assert item.get("state") == "Pending", f"{self.device.name}: listed {item}"
            if mid in self._handed or any(j.id == mid for j in self.offered):
                continue  # known: the app has it already
            assert item["phoneNumbers"] and len(item["phoneNumbers"]) == 1, item
            assert item["message"] == item["textMessage"]["text"], item
            self._recipients[mid] = item["phoneNumbers"][0]
            self.offered.append(Job(id=mid, recipient=item["phoneNumbers"][0],
                                    message=item["textMessage"]["text"]))

    async def _hear(self, deadline: float) -> bool:
        """Take the next event (False: none by `deadline`) and act on it as the
        app's EventsRouter does."""
        stream = self._connected()
        try:
            event = stream.events.get_nowait()
        except asyncio.QueueEmpty:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            try:
                event = await stream.next(left)
            except TimeoutError:
                return False
        if event.name == "MessageEnqueued":
            await self._list()
        elif event.name == "MessageCancelled":
            self._cancelled(event.json()["messageId"])
        else:
            self.others.append(event)
        return True

    def _deadline(self, timeout: float) -> float:
        return asyncio.get_running_loop().time() + timeout

    def _held(self) -> str:
        return (f"offered {self.offered}, cancels {self.cancels}, other events {self.others},"
                f" stream ended: {self._connected().ended.is_set()}")

    async def next_job(self, timeout: float = WAIT_S) -> Job:
        deadline = self._deadline(timeout)
        while not self.offered:
            if not await self._hear(deadline):
                raise AssertionError(f"{self.device.name}: no job within {timeout} s;"
                                     f" {self._held()}")
        job = self.offered.pop(0)
        self._handed.add(job.id)
        return job

    async def expect_cancel(self, job_id: str, timeout: float = WAIT_S) -> str | None:
        deadline = self._deadline(timeout)
        while job_id not in self.cancels:
            if not await self._hear(deadline):
                raise AssertionError(f"{self.device.name}: no cancel of {job_id} within"
                                     f" {timeout} s; {self._held()}")
        self.cancels.remove(job_id)
        return None  # `MessageCancelled` names no reason

    async def expect_nothing(self, within: float = 0.3) -> None:
        deadline = self._deadline(within)
        while True:
            assert not (self.offered or self.cancels or self.others), \
                f"{self.device.name}: unexpected {self._held()}"
            if not await self._hear(deadline):
                break
        assert not self._connected().ended.is_set(), f"{self.device.name}: stream ended"

    # --- what the app says -------------------------------------------------------

    async def _patch(self, job_id: str, state: str, error: str | None = None) -> None:
        number = self._recipients.get(job_id)
        r = await (self.app.patch(job_id, state, error=error) if number is None
                   else self.app.patch(job_id, state, number, error))
        assert 200 <= r.status_code < 300, f"PATCH {state} {job_id}: {r.status_code} {r.text}"

    async def _taken(self, job_id: str, state: str, status: str,
                     error: str | None = None) -> None:
        """PATCH `state`; the broker took it: the job is this device's and its
        history has `status` (a repeat adds no row, a late report does)."""
        await self._patch(job_id, state, error)
        r = await self.http.get(f"/messages/{job_id}", headers=self.account.headers)
        assert r.status_code == 200, r.text
        got = r.json()["data"]
        assert got["device"]["id"] == self.device.id, (state, got)
        assert status in [h["status"] for h in got["history"]], (state, got)

    async def ack(self, job_id: str) -> None:
        await self._taken(job_id, "Processed", "sending")

    async def report(self, job_id: str, status: CarrierReport, error: str | None = None) -> None:
        await self._taken(job_id, _APP_STATES[status], status, error)

    async def ack_refused(self, job_id: str) -> None:
        await self._patch(job_id, "Processed")

    async def report_refused(self, job_id: str, status: CarrierReport,
                             error: str | None = None) -> None:
        await self._patch(job_id, _APP_STATES[status], error)

    async def confirm_cancel(self, job_id: str) -> None:
        await self._patch(job_id, "Cancelled")
