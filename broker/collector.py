"""How `smsdora serve` runs CPython's cyclic garbage collector (issue 5).

A broker holds long-lived objects for every phone (socket, protocol,
connection: about 250 objects each) and makes a steady stream of
medium-lived ones (keep-alive timers, frame parsers, reports in flight).
CPython 3.11's collector promotes the medium-lived ones to the oldest
generation, and once those promotions reach a quarter of it, a full
collection walks every object again: at 10k phones that was a 0.3 s pause,
and young collections of 25-90 ms (docs/PERFORMANCE.md).

So:
- at start-up, what start-up built is collected once and frozen (moved out
  of the collector's sight), and the young generation is collected every
  10,000 allocations, the middle one every 10 of those;
- after a full collection the collector ran by itself, when every
  unreachable object has just been freed, the survivors are frozen too (at
  most once per `freeze_every_s`), so later collections examine only what
  was made since;
- while phones connect (100 more online than at the lowest point since the
  last freeze) the survivors are frozen after each collection: a new
  phone's objects (about 95) live as long as its socket, and without this
  each middle collection during a storm examined the last 800 phones' (30-40
  ms) and every full collection all of them. A freeze itself costs next to
  nothing (three list splices).

The cost: frozen objects are still freed by reference counting, but a
cycle among them that becomes garbage later is never collected. The broker
makes few cycles (measured: none per message, about 0.3 objects per phone
that leaves, 14 per closed HTTP connection), so what leaks is what was
alive at a freeze and later dies in a cycle; `smsdora_gc_freezes_total`
counts the freezes (watch the process's resident memory beside it). `SMSDORA_GC_FREEZE` = 0 turns the later freezes
off (the start-up freeze and the thresholds stay).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any, Callable

from broker import metrics

log = logging.getLogger("smsdora.collector")

THRESHOLDS = (10_000, 10, 100)
GROWTH = 100  # phones online more than at the last freeze: a connect storm
TICK_S = 0.1


class Collector:
    def __init__(self, freeze_every_s: float, online: Callable[[], int] = lambda: 0) -> None:
        self.freeze_every_s = freeze_every_s
        self.online = online
        self.full_collections = 0  # finished since start
        self.collections = 0  # of any generation
        self._seen_full = 0
        self._seen_any = 0
        self._frozen_at = float("-inf")  # the first full collection's survivors: at once
        self._online_low = 0  # fewest phones online since the last freeze

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
            if info.get("generation") == 2:
                self.full_collections += 1

    def maybe_freeze(self, now: float) -> bool:
        """Freeze the survivors of the last full collection (if the last
        freeze is `freeze_every_s` old), or of the last one of any
        generation while phones connect."""
        if self.freeze_every_s <= 0:
            return False
        online = self.online()
        self._online_low = min(self._online_low, online)
        full = (self.full_collections != self._seen_full
                and now - self._frozen_at >= self.freeze_every_s)
        storm = online - self._online_low >= GROWTH and self.collections != self._seen_any
        if not (full or storm):
            return False
        self._seen_full, self._seen_any = self.full_collections, self.collections
        self._online_low = online
        if full:
            self._frozen_at = now
        gc.freeze()
        # (Not gc.get_freeze_count(): it walks every frozen object, tens of
        # ms at 10k phones.)
        cause = "full" if full else "connect"
        metrics.GC_FREEZES.labels(cause).inc()
        log.debug("collector survivors frozen", extra={"cause": cause})
        return True

    async def run(self) -> None:
        """Look ten times a second: a freeze follows its collection closely,
        before much new garbage can be frozen with the survivors.

        (Collecting the young generation on a clock as well, every 0.25 s,
        kept young pauses near 3 ms but cost 15 % of the broker's throughput
        in bench/profile.py, against 25-28 ms pauses without it: not done.)"""
        if self.freeze_every_s <= 0:
            return  # turned off: CPython's own schedule, with the thresholds
        while True:
            await asyncio.sleep(TICK_S)
            self.maybe_freeze(time.monotonic())
