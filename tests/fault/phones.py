"""The soak's phones: `DeviceSim` as shipped, with a carrier that answers at
random per message and a record of what the broker refused.

Only the outcome is the soak's own: everything a phone does on the wire
(ack, wait for the receipt, send once per id, outbox replayed after a
reconnect) is `broker.device_sim`, unchanged, so the soak tests the phone
everyone else runs.
"""

from __future__ import annotations

import random
from typing import Final

from broker.device_sim import DeviceSim, Event, Outcome, Phone
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


class SoakSim(DeviceSim):
    def __init__(self, url: str, token: str, device_id: str, name: str, phone: SoakPhone,
                 delay_ms: int) -> None:
        super().__init__(url, token, delay_ms=delay_ms, on_event=self._seen)
        self.phone = phone
        self.device_id = device_id
        self.name = name
        self.drops = 0
        # id -> what the broker refused about it (`error` frames), for the report.
        self.refused: dict[str, list[str]] = {}

    def _seen(self, event: Event) -> None:
        if event.kind == "refused" and event.id is not None:
            self.refused.setdefault(event.id, []).append(event.detail)

    def view(self, message_id: str) -> str:
        """What this phone holds about a message, for a failed check."""
        job = self.phone.jobs.get(message_id)
        outbox = [r.status for r in self.phone.outbox.get(message_id, [])]
        refused = self.refused.get(message_id, [])
        return (f"{self.name} ({'online' if self.connected else 'offline'}): job"
                f" {job.state if job else 'unknown'}, outbox {outbox or 'empty'}"
                f"{', refused: ' + ' / '.join(refused) if refused else ''}")
