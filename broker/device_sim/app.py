"""`AppPhone`: the SMS Gateway for Android app's pure state (shared/SMSGATE.md
sections 4-7), as the simulated phone of `device-sim --app smsgate` keeps
it: what it was listed, what it sent, which snapshots the broker has yet
to take. No I/O, no clock (the time is passed in); `smsgate.AppSim` is the
thin asyncio adapter around it.

The app's rules (SMSGATE.md 6.7, 6.8; contract section 8):
- a job is sent as soon as it is listed (no receipt to wait for) and only
  once: a listing that names a known id makes it PATCH its current
  snapshot (`Pending` while it has not been handed to the modem), never
  send again;
- a listed `Cancelling` job is cancelled (PATCH `Cancelled`) if it is
  unknown or not yet sent, and ignored if already sent; `MessageCancelled`
  cancels a locally `Pending` job;
- every PATCH is a one-item full snapshot read when it is sent, so after an
  outage one PATCH carries the latest state. The app retries a failed PATCH
  11 times from 10 s; the simulator until the broker takes it (a report
  must not be lost when the broker is killed).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from broker.device_sim.mobile import (
    APP_DATE,
    Listed,
    MessagePatch,
    RecipientState,
    Registered,
    SmsReceived,
    SseEvent,
    WebHook,
    WebHookEvent,
    app_date,
    encode,
    listing_decoder,
    settings_decoder,
    webhooks_decoder,
)
from broker.device_sim.phone import FAILURE_TEXT, OUTCOMES, Event, Outcome, log

TTL_EXPIRED: Final = "TTL expired"

# The app's message states (SMSGATE.md 4.7, 6.11); it never sends `Cancelling`.
PENDING: Final = "Pending"
PROCESSED: Final = "Processed"  # handed to the modem: the SMS is going out
SENT: Final = "Sent"
DELIVERED: Final = "Delivered"
FAILED: Final = "Failed"
CANCELLED: Final = "Cancelled"
CANCELLING: Final = "Cancelling"  # only ever in a listing: the broker asks it back

Fetch = Literal["message", "webhooks", "settings"]


# --- the phone's jobs -------------------------------------------------------------


@dataclass
class AppJob:
    id: str
    recipients: list[str]
    text: str
    delivery_report: bool = True
    valid_until: dt.datetime | None = None
    state: str = PENDING
    states: dict[str, str] = field(default_factory=dict)  # first time each state was reached
    error: str | None = None
    wanted: int = 0  # PATCHes asked for (each state change, each re-listing)
    patched: int = 0  # ... of which the broker took the latest at this count
    patches: list[str] = field(default_factory=list)  # states the broker took, in order

    def snapshot(self) -> MessagePatch:
        return MessagePatch(
            id=self.id, state=self.state, states=dict(self.states),
            recipients=[RecipientState(n, self.state, self.error if self.state == FAILED else None)
                        for n in self.recipients])


# What a listing of a known (or unknown: None) job in this local state makes
# the app do, by the listed state (SMSGATE.md 6.7 step 6, 6.8).
_NEW, _REPORT, _CANCEL, _TOO_LATE, _NOTHING = "new", "report", "cancel", "too late", "nothing"
_SENT_STATES: Final = (PROCESSED, SENT, DELIVERED, FAILED)
_KNOWN: Final = frozenset({PENDING, CANCELLING, CANCELLED, *_SENT_STATES})
ON_LISTED: Final[dict[tuple[str | None, str], str]] = {
    (None, PENDING): _NEW,
    (None, CANCELLING): _CANCEL,
    (PENDING, PENDING): _REPORT,
    (PENDING, CANCELLING): _CANCEL,
    (CANCELLED, PENDING): _REPORT,
    (CANCELLED, CANCELLING): _NOTHING,  # the app's own edge: no second PATCH
    **{(s, PENDING): _REPORT for s in _SENT_STATES},
    **{(s, CANCELLING): _TOO_LATE for s in _SENT_STATES},
}


@dataclass
class Forward:
    """An SMS the app forwards to one of its `sms:received` webhooks: the
    body is encoded once (it sits in the app's queue); every attempt is
    signed anew, with its own timestamp (SMSGATE.md 8.1)."""

    id: str  # the envelope's: one per delivery
    message_id: str  # the payload's hash of the SMS
    url: str
    body: bytes


class ListingRefused(ValueError):
    """A listing the app could not read: it rejects the whole page."""


class AppPhone:
    """The app's state. `on_listing`, `on_event` and the radio's
    `start_send`/`finish_send` change it; `go_ahead` lists jobs the caller
    must now send; `outbox()` the ids whose snapshot the broker has yet to
    take (send `snapshot`, then `on_patched`). `events` is for display."""

    def __init__(self, outcome: Outcome = "delivered") -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        self.outcome: Outcome = outcome
        self.jobs: dict[str, AppJob] = {}
        self.sent_count: Counter[str] = Counter()  # SMS handed to the radio, per id
        self.go_ahead: list[str] = []
        self._unpatched: dict[str, None] = {}  # the outbox, oldest first
        self.events: list[Event] = []
        self.device_id: str | None = None
        self.token: str | None = None
        self.login: str | None = None
        self.settings: dict[str, dict[str, Any]] = {}
        self.webhooks: list[WebHook] = []
        self.forwards: dict[str, Forward] = {}  # webhook deliveries not yet taken
        self.forwarded: list[str] = []  # message ids the broker took (2xx), in order
        self._own_key: str | None = None

    def _event(self, kind: str, message_id: str | None, detail: str) -> None:
        self.events.append(Event(kind, message_id, detail))

    def on_registered(self, registered: Registered) -> None:
        self.device_id, self.token, self.login = registered.id, registered.token, registered.login
        self._event("registered", None, f"device {registered.id} of {registered.login},"
                                        f" token {registered.token}")

    def on_open(self) -> Fetch:
        """The event stream is open: the app lists its jobs at once."""
        self._event("connected", None, f"device {self.device_id}: event stream open")
        return "message"

    def on_event(self, event: SseEvent, now: dt.datetime) -> Fetch | None:
        """An event of the stream (SMSGATE.md 5.2); returns what to fetch now."""
        if event.name == "MessageEnqueued":
            return "message"
        if event.name == "WebhooksUpdated":
            return "webhooks"
        if event.name == "SettingsUpdated":
            return "settings"
        if event.name == "MessageCancelled":
            try:
                message_id = msgspec.json.decode(event.data, type=dict[str, str])["messageId"]
            except (msgspec.DecodeError, KeyError):
                # The app would crash here (SMSGATE.md 5.2): the broker must not send this.
                self._event("refused", None, f"MessageCancelled without a messageId: {event.data!r}")
                return None
            job = self.jobs.get(message_id)
            if job is None:
                return None  # the next listing names it as Cancelling
            if job.state == PENDING:
                self._cancel(job, now)
            elif job.state != CANCELLED:
                self._event("refused", message_id, f"cancel too late: already {job.state}")
            return None
        log.info("unknown event type", extra={"event": event.name})
        return None

    def on_listing(self, raw: bytes, now: dt.datetime) -> None:
        """`GET /message`'s answer. Raises ListingRefused for a page the app
        would reject whole (an item or a date it cannot read)."""
        try:
            items = listing_decoder.decode(raw)
        except msgspec.DecodeError as err:
            raise ListingRefused(f"unreadable listing: {err}") from None
        for item in items:
            for value in (item.createdAt, item.validUntil):
                if value is not None and not APP_DATE.match(value):
                    raise ListingRefused(f"{item.id}: a date the app misreads: {value!r}")
        for item in items:
            self._listed(item, now)

    def _listed(self, item: Listed, now: dt.datetime) -> None:
        # Gson makes an unknown state null, and null is Pending (SMSGATE.md 4.6.1).
        listed = item.state if item.state in _KNOWN else PENDING
        job = self.jobs.get(item.id)
        action = ON_LISTED.get((job.state if job else None, listed))
        if action is None:
            return  # a listed state the app ignores
        if action == _NEW:
            text = item.textMessage.text if item.textMessage else (
                f"<data for port {item.dataMessage.port}>" if item.dataMessage else item.message)
            if text is None or not item.phoneNumbers or len(set(item.phoneNumbers)) < len(
                    item.phoneNumbers):
                self._event("refused", item.id, "no content or no unique phone numbers: skipped")
                return
            job = AppJob(item.id, list(item.phoneNumbers), text, item.withDeliveryReport,
                         dt.datetime.fromisoformat(item.validUntil) if item.validUntil else None)
            job.states[PENDING] = app_date(now)
            self.jobs[item.id] = job
            self.go_ahead.append(item.id)
            self._event("job", item.id, f"to {', '.join(job.recipients)}")
        elif action == _CANCEL:
            if job is None:
                job = AppJob(item.id, list(item.phoneNumbers), item.message or "")
                self.jobs[item.id] = job
            self._cancel(job, now)
        elif action == _REPORT:
            assert job is not None
            self._want(job)
        elif action == _TOO_LATE:
            assert job is not None
            self._event("refused", item.id, f"cancel too late: already {job.state}")

    def _cancel(self, job: AppJob, now: dt.datetime) -> None:
        self._move(job, CANCELLED, now)
        self._event("cancelled", job.id, "given back unsent")

    def _move(self, job: AppJob, state: str, now: dt.datetime, error: str | None = None) -> None:
        job.state = state
        job.error = error
        job.states.setdefault(state, app_date(now))
        self._want(job)

    def _want(self, job: AppJob) -> None:
        job.wanted += 1
        self._unpatched[job.id] = None

    def on_settings(self, raw: bytes) -> None:
        """`GET /settings` (4.9): objects of sections. The simulator keeps
        them for display and leaves the pacing to the broker."""
        try:
            self.settings = dict(settings_decoder.decode(raw))
        except msgspec.DecodeError as err:
            self._event("refused", None, f"settings the app cannot import: {err}")
            return
        limit = self.settings.get("messages", {}).get("limit_value")
        self._event("settings", None, f"limit {limit}/min" if limit else "no send limit")

    def on_webhooks(self, raw: bytes) -> None:
        """`GET /webhooks` (4.8): an event the app does not know fails its
        whole sync (it keeps its old list)."""
        try:
            hooks = webhooks_decoder.decode(raw)
        except msgspec.DecodeError as err:
            self._event("refused", None, f"webhooks the app cannot store: {err}")
            return
        self.webhooks = list(hooks)
        self._event("webhooks", None, ", ".join(f"{h.event} -> {h.url}" for h in hooks) or "none")

    # --- SMS the phone receives (SMSGATE.md 8) --------------------------------------

    def receive_sms(self, sender: str, text: str, now: dt.datetime,
                    sim: int | None = None) -> list[Forward]:
        """The radio got an SMS: one delivery per `sms:received` webhook the
        app holds (none fetched yet: it goes nowhere, as on the phone)."""
        stamp = app_date(now)
        # The app's messageId: a hash of sender, time, SIM and text, in hex.
        message_id = format(zlib.crc32(f"{sender}|{stamp}|{sim or 0}|{text}".encode()), "x")
        payload = SmsReceived(messageId=message_id, message=text, sender=sender,
                              receivedAt=stamp, phoneNumber=sender, simNumber=sim)
        out = []
        for hook in self.webhooks:
            if hook.event != "sms:received":
                continue
            forward = Forward(uuid.uuid4().hex, message_id, hook.url, encode(WebHookEvent(
                id=secrets.token_urlsafe(16), webhookId=hook.id, event=hook.event,
                deviceId=self.device_id or "", payload=payload)))
            self.forwards[forward.id] = forward
            out.append(forward)
        self._event("incoming", message_id, f"from {sender}: {text}" + (
            "" if out else " (no sms:received webhook: not forwarded)"))
        return out

    def signing_key(self) -> str:
        """`webhooks.signing_key` from the settings; like the app, without
        one it makes up its own (8 characters), which no broker knows."""
        key = self.settings.get("webhooks", {}).get("signing_key")
        if isinstance(key, str) and key:
            return key
        if self._own_key is None:
            self._own_key = secrets.token_urlsafe(6)[:8]
        return self._own_key

    def retry_count(self) -> int:
        """`webhooks.retry_count`: attempts of one delivery (default 15)."""
        count = self.settings.get("webhooks", {}).get("retry_count", 15)
        return max(1, int(count)) if isinstance(count, (int, float, str)) else 15

    def on_forwarded(self, forward_id: str) -> None:
        """The webhook answered 2xx: the app drops the delivery."""
        forward = self.forwards.pop(forward_id)
        self.forwarded.append(forward.message_id)
        self._event("stored", forward.message_id, "the broker has the SMS")

    def on_forward_dropped(self, forward_id: str, detail: str) -> None:
        """Out of attempts: the app gives the delivery up."""
        forward = self.forwards.pop(forward_id)
        self._event("refused", forward.message_id, f"sms:received webhook given up: {detail}")

    # --- the radio ---------------------------------------------------------------

    def start_send(self, message_id: str, now: dt.datetime) -> bool:
        """The app's send worker takes the job: True if the SMS goes out now
        (then `finish_send`). Not if it was cancelled meanwhile, nor past
        its `validUntil` (the app fails it itself)."""
        job = self.jobs[message_id]
        if job.state != PENDING:
            return False
        if job.valid_until is not None and now >= job.valid_until:
            self._move(job, FAILED, now, TTL_EXPIRED)
            self._event("reported", message_id, f"{FAILED}: {TTL_EXPIRED}")
            return False
        self.sent_count[message_id] += 1
        self._move(job, PROCESSED, now)
        self._event("sending", message_id, f"to {', '.join(job.recipients)}")
        return True

    def finish_send(self, message_id: str, now: dt.datetime) -> None:
        """The radio is done: Sent, then Delivered (with a delivery report)
        or Failed, as `outcome` says."""
        job = self.jobs[message_id]
        if self.outcome == "failed":
            self._move(job, FAILED, now, FAILURE_TEXT)
        else:
            self._move(job, SENT, now)
            if self.outcome == "delivered" and job.delivery_report:
                self._move(job, DELIVERED, now)
        self._event("reported", message_id, job.state)

    # --- the outbox ----------------------------------------------------------------

    def outbox(self) -> list[str]:
        """Ids with a snapshot the broker has not taken yet, oldest first."""
        return list(self._unpatched)

    def unpatched(self, message_id: str) -> bool:
        return message_id in self._unpatched

    def _taken(self, job: AppJob, count: int) -> None:
        job.patched = max(job.patched, count)
        if job.patched >= job.wanted:
            self._unpatched.pop(job.id, None)

    def snapshot(self, message_id: str) -> tuple[int, str, bytes]:
        """The `PATCH /message` body for the job now, with the count it
        answers and the state it says."""
        job = self.jobs[message_id]
        return job.wanted, job.state, encode([job.snapshot()])

    def on_patched(self, message_id: str, count: int, state: str) -> None:
        """The broker took the snapshot sent at `count` (2xx)."""
        job = self.jobs[message_id]
        self._taken(job, count)
        job.patches.append(state)
        self._event("patched", message_id, state)

    def on_patch_refused(self, message_id: str, count: int, detail: str) -> None:
        """A 4xx: sending it again would be refused again (the app drops it too)."""
        self._taken(self.jobs[message_id], count)
        self._event("refused", message_id, f"PATCH /message: {detail}")
