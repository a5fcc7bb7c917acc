"""broker/lookups.py: reads that arrive while a query runs share the next one.

Pure asyncio: the fetch is a plain coroutine that records its calls."""

from __future__ import annotations

import asyncio

import pytest

from broker.lookups import Coalescer

pytestmark = pytest.mark.timeout(10)


class Source:
    """A fetch that answers keys it knows, after the test lets it go."""

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def fetch(self, keys: list[str]) -> dict[str, int]:
        self.calls.append(list(keys))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: self.known[k] for k in keys if k in self.known}


async def test_a_lone_read_is_one_query() -> None:
    source = Source({"a": 1})
    source.gate.set()
    lookups: Coalescer[str, int] = Coalescer(source.fetch)
    assert await lookups.get("a") == 1
    assert await lookups.get("zz") is None  # not found
    assert source.calls == [["a"], ["zz"]]


async def test_reads_during_a_query_share_the_next_one() -> None:
    source = Source({k: i for i, k in enumerate("abcdef")})
    lookups: Coalescer[str, int] = Coalescer(source.fetch)
    first = asyncio.create_task(lookups.get("a"))
    await asyncio.sleep(0)  # the first query is in flight, held by the gate
    later = [asyncio.create_task(lookups.get(k)) for k in "bcdeb"]
    await asyncio.sleep(0)
    source.gate.set()
    assert await first == 0
    assert [await t for t in later] == [1, 2, 3, 4, 1]
    # Two queries for six reads; the key read twice is asked once.
    assert source.calls == [["a"], ["b", "c", "d", "e"]]


async def test_batches_are_capped() -> None:
    source = Source({str(i): i for i in range(10)})
    lookups: Coalescer[str, int] = Coalescer(source.fetch, max_batch=4)
    tasks = [asyncio.create_task(lookups.get(str(i))) for i in range(10)]
    await asyncio.sleep(0)
    source.gate.set()
    assert [await t for t in tasks] == list(range(10))
    assert [len(c) for c in source.calls] == [4, 4, 2]


async def test_a_failed_query_fails_its_readers_only() -> None:
    source = Source({"a": 1, "b": 2})
    lookups: Coalescer[str, int] = Coalescer(source.fetch)
    source.fail = ConnectionResetError("database went away")
    first = asyncio.create_task(lookups.get("a"))
    await asyncio.sleep(0)
    source.gate.set()
    with pytest.raises(ConnectionResetError):
        await first
    source.fail = None
    assert await lookups.get("b") == 2  # the next read gets a new query


async def test_a_cancelled_reader_leaves_the_others_their_answer() -> None:
    source = Source({"a": 1})
    lookups: Coalescer[str, int] = Coalescer(source.fetch)
    gone = asyncio.create_task(lookups.get("a"))
    stays = asyncio.create_task(lookups.get("a"))
    await asyncio.sleep(0)
    gone.cancel()
    source.gate.set()
    assert await stays == 1
    assert gone.cancelled()


async def test_close_cancels_the_waiting_readers() -> None:
    source = Source({"a": 1})
    lookups: Coalescer[str, int] = Coalescer(source.fetch)
    waiting = asyncio.create_task(lookups.get("a"))
    await asyncio.sleep(0)
    await lookups.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
