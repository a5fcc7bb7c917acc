"""`Phone`: the simulated phone's pure state machine (frames in, frames and
events out; no I/O, no clock: time is passed in). See the package's
docstring for the rules it follows."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, Literal

from protocol import frames

log = logging.getLogger("smsdora.device_sim")

APP_VERSION: Final = "device-sim/1"
FAILURE_TEXT: Final = "simulated failure"
CLOSE_REPLACED: Final = 4000
RETRY_S: Final = 1.0  # pause before saying again what the broker could not store
WELCOME_TIMEOUT_S: Final = 10.0
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 10.0

Outcome = Literal["delivered", "sent", "failed"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("delivered", "sent", "failed")

# Job states, in the phone's own words.
ACKED: Final = "acked"  # ack written; waiting for its receipt, the go-ahead
SENDING: Final = "sending"  # go-ahead received: the SMS is going out
SENT: Final = "sent"  # outcomes reported (or, from an ack receipt, done before)
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"  # the broker took it back before it was sent
DROPPED: Final = "dropped"  # the broker refused it with an `error` frame
_UNSENT: Final = frozenset({ACKED, SENDING})
_DONE: Final = frozenset({SENT, DELIVERED, FAILED})


@dataclass
class Job:
    id: str
    recipient: str
    message: str
    state: str = ACKED
    reports: list[frames.Status] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    """Something a person watching the phone would want to see."""

    kind: str  # connected, job, sending, reported, receipt, cancelled, refused, done,
    # incoming (an SMS the phone received), stored (the broker has it)
    id: str | None
    detail: str


class Phone:
    """The phone's protocol state, without I/O.

    Each `on_*` method takes what arrived and returns the frames to write, in
    order; `go_ahead` lists jobs whose SMS the caller must now send, then
    finish with `finish_send`. `events` collects what happened, for display.
    """

    def __init__(self, outcome: Outcome = "delivered") -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        self.outcome: Outcome = outcome
        self.jobs: dict[str, Job] = {}
        # id -> reports written but not yet receipted, oldest first.
        self.outbox: dict[str, list[frames.Status]] = {}
        # How many times each message's SMS was handed to the radio: a job
        # that runs twice shows up as 2 here (tests assert it never does).
        self.sent_count: Counter[str] = Counter()
        self.go_ahead: list[str] = []
        # Ids whose last frame the broker could not store ("unavailable"):
        # sent again after a pause (`take_retries`).
        self.retry: set[str] = set()
        self.events: list[Event] = []
        self.pongs = 0
        self.device_id: str | None = None
        self.heartbeat_s: int | None = None
        # SMS the phone received, reported (`incoming`) and not yet receipted:
        # said again after every reconnect until the broker has stored them.
        self.inbox: dict[str, frames.Incoming] = {}
        self.stored: list[str] = []  # ids of the SMS the broker receipted, in order

    def _event(self, kind: str, message_id: str | None, detail: str) -> None:
        self.events.append(Event(kind, message_id, detail))

    def pending(self) -> list[str]:
        """Ids it holds and has not reported: `hello.pending`."""
        return [j.id for j in self.jobs.values() if j.state in _UNSENT]

    def hello(self, health: frames.Health | None) -> frames.Hello:
        return frames.Hello(protocol=frames.PROTOCOL_VERSION, appVersion=APP_VERSION,
                            pending=self.pending(), health=health)

    def on_welcome(self, welcome: frames.Welcome) -> list[frames.DeviceFrame]:
        """The outbox again: every report and received SMS not yet receipted."""
        self.device_id = welcome.deviceId
        self.heartbeat_s = welcome.heartbeatSeconds
        self._event("connected", None, f"device {welcome.deviceId}")
        return [*(r for reports in self.outbox.values() for r in reports), *self.inbox.values()]

    def receive_sms(self, sender: str, text: str, at: dt.datetime,
                    sim: int | None = None) -> frames.Incoming:
        """The radio got an SMS: its `incoming` frame, kept until its receipt."""
        frame = frames.Incoming(id=str(uuid.uuid4()), sender=sender, message=text,
                                receivedAt=at, sim=sim)
        self.inbox[frame.id] = frame
        self._event("incoming", frame.id, f"from {sender}: {text}")
        return frame

    def on_frame(self, frame: frames.BrokerFrame) -> list[frames.DeviceFrame]:
        match frame:
            case frames.Send():
                return self._on_send(frame)
            case frames.Receipt(id=message_id, status=status):
                self._on_receipt(message_id, status)
            case frames.Cancel(id=message_id, reason=reason):
                self._on_cancel(message_id, reason)
            case frames.Error(code=code, detail=detail, id=message_id):
                self._on_error(code, detail, message_id)
            case frames.Welcome():
                self._event("refused", None, "welcome again on an open socket: ignored")
            case frames.Pong():
                self.pongs += 1
        return []

    def _on_send(self, frame: frames.Send) -> list[frames.DeviceFrame]:
        job = self.jobs.get(frame.id)
        if job is None or (job.state in (CANCELLED, DROPPED) and not self.sent_count[frame.id]):
            # New, or taken back before it was sent and now given again.
            self.jobs[frame.id] = Job(frame.id, frame.recipient, frame.message)
            self._event("job", frame.id, f"to {frame.recipient}")
            return [frames.Ack(id=frame.id)]
        if job.state == ACKED:
            return [frames.Ack(id=frame.id)]  # not sent yet: its receipt is still the go-ahead
        if job.state == SENDING:
            return []  # going out now; its report follows
        # Sent (or refused after sending): report again, never send again.
        again: list[frames.DeviceFrame] = list(self.outbox.get(frame.id, ()))
        if not again and job.reports:
            again = [job.reports[-1]]
        if not again:
            return [frames.Ack(id=frame.id)]  # done before we held it: the receipt says so
        return again

    def _on_receipt(self, message_id: str, status: str) -> None:
        if message_id in self.inbox and status == frames.RECEIVED:
            del self.inbox[message_id]
            self.stored.append(message_id)
            self._event("stored", message_id, "the broker has the SMS")
            return
        job = self.jobs.get(message_id)
        if job is None:
            return
        if job.state == ACKED:  # the receipt for our ack
            if status == "sending":
                job.state = SENDING
                self.sent_count[message_id] += 1
                self.go_ahead.append(message_id)
                self._event("sending", message_id, f"to {job.recipient}")
            elif status in (SENT, DELIVERED):
                job.state = status
                self._event("done", message_id, f"already {status}: not sent again")
            return
        queued = self.outbox.get(message_id)
        if queued is None:
            return  # a repeat, or the receipt of a re-ack: nothing left to forget
        for i, report in enumerate(queued):
            if report.status == status:
                del queued[i]
                break
        if not queued:
            del self.outbox[message_id]
        self._event("receipt", message_id, status)

    def _on_cancel(self, message_id: str, reason: str) -> None:
        job = self.jobs.get(message_id)
        if job is None or job.state != ACKED:
            # Sending or sent: the SMS has left, nothing can call it back.
            self._event("refused", message_id, f"cancel ({reason}) too late: already {job.state}"
                        if job else f"cancel ({reason}) for an unknown job")
            return
        job.state = CANCELLED
        self._event("cancelled", message_id, reason)

    def _on_error(self, code: str, detail: str, message_id: str | None) -> None:
        self._event("refused", message_id, f"{code}: {detail}")
        if message_id is None:
            return
        if code == frames.UNAVAILABLE:
            # Not stored, so not refused: keep it and say it again later.
            self.retry.add(message_id)
            return
        if self.inbox.pop(message_id, None) is not None:
            return  # an SMS the broker refused: saying it again would not help
        job = self.jobs.get(message_id)
        if job is not None and job.state == ACKED:
            job.state = DROPPED
        self.outbox.pop(message_id, None)

    def take_retries(self) -> list[frames.DeviceFrame]:
        """What to send again for the ids the broker could not store: the ack
        of a job still waiting for its go-ahead, else its unreceipted reports."""
        out: list[frames.DeviceFrame] = []
        for message_id in sorted(self.retry):
            if message_id in self.inbox:
                out.append(self.inbox[message_id])
                continue
            job = self.jobs.get(message_id)
            if job is not None and job.state == ACKED:
                out.append(frames.Ack(id=message_id))
            out.extend(self.outbox.get(message_id, ()))
        self.retry.clear()
        return out

    def finish_send(self, message_id: str, at: str) -> list[frames.Status]:
        """The radio is done with the SMS: the reports of the outcome, into the outbox."""
        job = self.jobs[message_id]
        if self.outcome == "failed":
            reports = [frames.Status(id=message_id, status="failed", error=FAILURE_TEXT, at=at)]
        elif self.outcome == "sent":
            reports = [frames.Status(id=message_id, status="sent", at=at)]
        else:
            reports = [frames.Status(id=message_id, status="sent", at=at),
                       frames.Status(id=message_id, status="delivered", at=at)]
        job.state = reports[-1].status
        job.reports.extend(reports)
        self.outbox.setdefault(message_id, []).extend(reports)
        self._event("reported", message_id, job.state)
        return reports
