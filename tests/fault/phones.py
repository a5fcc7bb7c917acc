"""The soak's phones, of either kind: `DeviceSim` (our WebSocket protocol)
and `AppSim` (the SMS Gateway for Android app) as shipped, with a carrier
that answers at random per message and a record of what the broker refused.

Only the outcome is the soak's own: everything a phone does on the wire
(WebSocket: ack, wait for the receipt, send once per id, outbox replayed
after a reconnect; the app: send what it lists at once and once, PATCH its
snapshots until the broker takes them, give back what it has not sent) is
`broker.device_sim`, unchanged, so the soak tests the phones everyone else
runs.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Final

from broker import store
from broker.device_sim import AppPhone, AppSim, DeviceSim, Event, Outcome, Phone
from protocol import frames

# delivered 60 %, sent 20 % (no delivery report ever comes), failed 20 %.
OUTCOME_WEIGHTS: Final[dict[Outcome, int]] = {"delivered": 6, "sent": 2, "failed": 2}


def outcome_for(seed: int, message_id: str) -> Outcome:
    """The carrier's answer for a message: fixed by the seed and the id."""
    rng = random.Random(f"{seed}/{message_id}")
    return rng.choices(list(OUTCOME_WEIGHTS), list(OUTCOME_WEIGHTS.values()))[0]


class SoakPhone(Phone):
    """A `Phone` whose outcome is drawn per message; `outcomes` (shared by
    all phones) records what each message's phone reported."""

    def __init__(self, seed: int, outcomes: dict[str, str]) -> None:
        super().__init__("delivered")
        self._seed = seed
        self._outcomes = outcomes

    def finish_send(self, message_id: str, at: str) -> list[frames.Status]:
        self.outcome = outcome_for(self._seed, message_id)
        self._outcomes[message_id] = self.outcome
        return super().finish_send(message_id, at)


class SoakAppPhone(AppPhone):
    """An `AppPhone` whose outcome is drawn per message, like `SoakPhone`."""

    def __init__(self, seed: int, outcomes: dict[str, str]) -> None:
        super().__init__("delivered")
        self._seed = seed
        self._outcomes = outcomes

    def finish_send(self, message_id: str, now: dt.datetime) -> None:
        self.outcome = outcome_for(self._seed, message_id)
        self._outcomes[message_id] = self.outcome
        super().finish_send(message_id, now)


class Refusals:
    """Id -> what the broker refused about it (`error` frames; for the app,
    refused requests and cancels that came too late), for the report."""

    def __init__(self) -> None:
        self.refused: dict[str, list[str]] = {}
        self.drops = 0

    def _seen(self, event: Event) -> None:
        if event.kind == "refused" and event.id is not None:
            self.refused.setdefault(event.id, []).append(event.detail)

    def _refused(self, message_id: str) -> str:
        refused = self.refused.get(message_id, [])
        return f", refused: {' / '.join(refused)}" if refused else ""


class SoakSim(Refusals, DeviceSim):
    kind: Final = store.WEBSOCKET

    def __init__(self, url: str, token: str, device_id: str, name: str, phone: SoakPhone,
                 delay_ms: int) -> None:
        Refusals.__init__(self)
        DeviceSim.__init__(self, url, token, delay_ms=delay_ms, on_event=self._seen)
        self.phone = phone
        self.device_id = device_id
        self.name = name

    def view(self, message_id: str) -> str:
        """What this phone holds about a message, for a failed check."""
        job = self.phone.jobs.get(message_id)
        outbox = [r.status for r in self.phone.outbox.get(message_id, [])]
        return (f"{self.name} (websocket, {'online' if self.connected else 'offline'}): job"
                f" {job.state if job else 'unknown'}, outbox {outbox or 'empty'}"
                f"{self._refused(message_id)}")


class SoakAppSim(Refusals, AppSim):
    kind: Final = store.SMSGATE

    def __init__(self, url: str, token: str, device_id: str, name: str, phone: SoakAppPhone,
                 delay_ms: int) -> None:
        Refusals.__init__(self)
        AppSim.__init__(self, url, token=token, device_id=device_id, delay_ms=delay_ms,
                        phone=phone, on_event=self._seen)
        self.name = name

    def view(self, message_id: str) -> str:
        """What this phone holds about a message, for a failed check."""
        job = self.phone.jobs.get(message_id)
        waiting = job is not None and message_id in self.phone.outbox()
        return (f"{self.name} (smsgate, {'online' if self.connected else 'offline'}): job"
                f" {job.state if job else 'unknown'}, PATCHed {job.patches if job else []}"
                f"{', a snapshot still to PATCH' if waiting else ''}{self._refused(message_id)}")
