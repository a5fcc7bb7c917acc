"""broker/collector.py: freezing the survivors of full collections. Pure
(the real `gc` module of this process, no I/O); each test puts the
collector's thresholds and frozen objects back."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from broker.collector import THRESHOLDS, Collector


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_freezes_start_up_and_sets_thresholds() -> None:
    collector = Collector(freeze_every_s=300)
    gc.unfreeze()
    collector.start()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == THRESHOLDS
        assert collector._on_gc in gc.callbacks
    finally:
        collector.stop()
    assert collector._on_gc not in gc.callbacks


def test_survivors_of_a_full_collection_are_frozen_at_most_once_per_interval() -> None:
    collector = Collector(freeze_every_s=300)
    collector.start()
    try:
        t0 = 1000.0
        # No full collection since the start: nothing to freeze.
        assert collector.maybe_freeze(t0 - 500) is False
        kept = [[i] for i in range(10_000)]  # survivors, made after the start
        before = gc.get_freeze_count()
        gc.collect(2)
        assert collector.full_collections == 1
        # The first full collection's survivors are frozen at once.
        assert collector.maybe_freeze(t0) is True
        assert gc.get_freeze_count() >= before + len(kept)
        gc.collect(2)
        assert collector.maybe_freeze(t0 + 10) is False  # too soon after the last freeze
        assert collector.maybe_freeze(t0 + 300) is True
        # Once per full collection: none since, so no second freeze.
        assert collector.maybe_freeze(t0 + 2000) is False
        gc.collect(2)
        assert collector.maybe_freeze(t0 + 400) is False  # 100 s after the last freeze
        assert collector.maybe_freeze(t0 + 600) is True
        # A young collection does not count.
        gc.collect(0)
        assert collector.maybe_freeze(t0 + 5000) is False
    finally:
        collector.stop()


def test_zero_turns_the_later_freezes_off() -> None:
    collector = Collector(freeze_every_s=0)
    collector.start()
    try:
        gc.collect(2)
        assert collector.full_collections == 1
        assert collector.maybe_freeze(collector._frozen_at + 10**6) is False
    finally:
        collector.stop()


def test_survivors_are_frozen_after_collections_while_phones_connect() -> None:
    online = [0]
    collector = Collector(freeze_every_s=300, online=lambda: online[0])
    collector.start()
    try:
        assert collector.maybe_freeze(0.0) is False
        online[0] = 80  # some phones: no storm yet
        gc.collect(0)
        assert collector.maybe_freeze(1.0) is False
        online[0] = 120  # 100 more than the fewest since the last freeze (0)
        kept = [[i] for i in range(5_000)]
        before = gc.get_freeze_count()
        assert collector.maybe_freeze(2.0) is True  # the young collection above counts
        assert gc.get_freeze_count() >= before + len(kept)
        online[0] = 200  # 80 more since: not yet
        gc.collect(0)
        assert collector.maybe_freeze(3.0) is False
        online[0] = 50  # phones leave, then come back: growth counts from the low
        assert collector.maybe_freeze(4.0) is False
        online[0] = 150
        assert collector.maybe_freeze(5.0) is True
        online[0] = 2000  # a storm, but no collection since the freeze
        assert collector.maybe_freeze(6.0) is False
    finally:
        collector.stop()
