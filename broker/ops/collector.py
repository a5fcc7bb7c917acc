"""How `smsdora serve` runs CPython's cyclic garbage collector (issue 5).

A broker holds long-lived objects for every phone (socket, protocol,
connection: about 95 objects each) and keeps replacing medium-lived ones:
each phone's keep-alive timer every 20 s, its frame parser at every frame.
With CPython 3.11's own schedule, at 10k phones:
- a collection examines every object still alive in its generations, and
  the phones' objects stay in the young and middle generations until they
  are promoted; a middle collection during a connect storm took 30-40 ms,
  a full one 0.3-0.7 s;
- the young generation is collected when allocations minus deallocations
  pass a threshold, and an idle broker's keep-alive churn (a timer born, a
  timer freed) never gets there: the first young collection under load then
  examined 95,000 objects, the whole fleet's timers and parsers (83 ms).

So:
- at start-up, what start-up built is collected once and frozen (moved out
  of the collector's sight for good), and the young generation is collected
  every 10,000 allocations, the middle one every 10 of those;
- at most every `freeze_every_s` (0.25 s), within a tenth of a second of a
  collection, the survivors are frozen too: what survived a collection is what lives long
  (a phone's socket) or long enough to be examined again and again (its
  timers); frozen, it is freed by reference counting as ever, but never
  examined again (during a reconnect storm, a freeze a second still left a
  second of phones, 2,800, to each middle collection: 49 ms);
- a young collection runs when none has for a second, so the young
  generation never holds more than a second of objects.

The cost: a reference cycle that involves a frozen object and becomes
garbage later is never collected, and nor is one that was already garbage
at a freeze but not yet collected (gc.freeze() takes every tracked object:
cycles made in the tenth of a second since the last collection, or that
died after surviving one). The broker makes few (measured in
bench/profile.py `garbage`: none per message, per HTTP request or per phone
connect, since server.py lets go of uvicorn's parser after the WebSocket
upgrade; about 0.3 objects per phone that disconnects). Error paths make
them (an exception's traceback holds its frame, whose locals hold what
holds the exception): the two that hand one error to many waiters, the
report writer and the coalesced reads of a storm, drop the traceback first. `smsdora_gc_freezes_total` counts the
freezes; `SMSDORA_GC_FREEZE` = 0 turns this off (the start-up freeze and the
thresholds stay).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from broker.ops import metrics

log = logging.getLogger("smsdora.collector")

THRESHOLDS = (10_000, 10, 100)
TICK_S = 0.1
IDLE_YOUNG_S = 1.0  # a young collection when none has run for this long


class Collector:
    def __init__(self, freeze_every_s: float) -> None:
        self.freeze_every_s = freeze_every_s
        self.collections = 0  # finished since start, any generation
        self._seen = 0
        self._frozen_at = float("-inf")
        self._collected_at = time.monotonic()

    def start(self) -> None:
        """Freeze what start-up built, set the thresholds, watch collections."""
        gc.collect()
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)
        gc.callbacks.append(self._on_gc)
        metrics.GC_FREEZES.labels("start").inc()

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, in whatever thread allocated: count only.
        if phase == "stop":
            self.collections += 1

    def tick(self, now: float) -> str | None:
        """One look: a young collection if the broker has been idle for a
        second, then a freeze of the survivors if a collection ran since the
        last freeze and that freeze is `freeze_every_s` old. Returns what it
        did ("young", "freeze", "young+freeze") or None."""
        if self.freeze_every_s <= 0:
            return None
        did = []
        if self.collections != self._seen:
            self._collected_at = now
        elif now - self._collected_at >= IDLE_YOUNG_S:
            gc.collect(0)  # counted by _on_gc
            self._collected_at = now
            did.append("young")
        if self.collections != self._seen and now - self._frozen_at >= self.freeze_every_s:
            # gc.freeze() takes every object the collector tracks, garbage
            # not yet collected included (a tenth of a second's at most: the
            # freeze follows a collection). Collecting first was measured: a
            # full collection examined all that was made since the last
            # freeze, 10-17 ms 4 times a second under load and 15 % fewer
            # sends; a young one moved p99 at half load from 4.9 ms to 10-11.
            self._seen = self.collections  # (the collection above counted)
            self._frozen_at = now
            gc.freeze()  # three list splices; (not get_freeze_count(): it walks them all)
            metrics.GC_FREEZES.labels("survivors").inc()
            did.append("freeze")
        return "+".join(did) or None

    async def run(self) -> None:
        if self.freeze_every_s <= 0:
            return  # turned off: CPython's own schedule, with the thresholds
        while True:
            await asyncio.sleep(TICK_S)
            self.tick(time.monotonic())
