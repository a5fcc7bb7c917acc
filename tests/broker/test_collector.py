"""broker/ops/collector.py: when the broker collects and freezes. Pure (the real
`gc` module of this process, times passed in, no I/O); each test puts the
thresholds back and unfreezes what it froze."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from broker.ops.collector import IDLE_YOUNG_S, THRESHOLDS, Collector


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector(freeze_every_s=1.0)
    c.start()
    yield c
    c.stop()


def test_start_freezes_start_up_and_sets_thresholds() -> None:
    gc.unfreeze()
    c = Collector(freeze_every_s=1.0)
    c.start()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == THRESHOLDS
        assert c._on_gc in gc.callbacks
    finally:
        c.stop()
    assert c._on_gc not in gc.callbacks


def test_survivors_of_a_collection_are_frozen_at_most_once_per_interval(
        collector: Collector) -> None:
    t0 = collector._collected_at
    assert collector.tick(t0) is None  # no collection since the start
    kept = [[i] for i in range(10_000)]  # survivors, made after the start
    before = gc.get_freeze_count()
    gc.collect(0)
    assert collector.tick(t0 + 0.1) == "freeze"
    assert gc.get_freeze_count() >= before + len(kept)
    gc.collect(0)
    assert collector.tick(t0 + 0.5) is None  # 0.4 s after the last freeze
    assert collector.tick(t0 + 1.2) == "freeze"
    assert collector.tick(t0 + 1.3) is None  # nothing collected since


def test_an_idle_broker_collects_its_young_generation_every_second(
        collector: Collector) -> None:
    t0 = collector._collected_at
    assert collector.tick(t0 + 0.5) is None
    # A second without any collection: one young collection, then its
    # survivors are frozen (the last freeze is long past).
    assert collector.tick(t0 + IDLE_YOUNG_S) == "young+freeze"
    young = [[i] for i in range(1000)]
    assert collector.tick(t0 + IDLE_YOUNG_S + 0.5) is None
    assert collector.tick(t0 + 2 * IDLE_YOUNG_S) == "young+freeze"
    # Collections of its own (a busy broker) put the idle one off.
    gc.collect(0)
    assert collector.tick(t0 + 2.5 * IDLE_YOUNG_S) is None  # frozen 0.5 s ago
    assert collector.tick(t0 + 3.2 * IDLE_YOUNG_S) == "freeze"
    assert len(young) == 1000


def test_zero_turns_it_off() -> None:
    c = Collector(freeze_every_s=0)
    c.start()
    try:
        gc.collect(0)
        assert c.tick(c._collected_at + 100) is None
    finally:
        c.stop()
