"""broker/http/deadline.py: the request's own time, and its body's apart."""

from __future__ import annotations

import asyncio

import pytest

from broker.http.deadline import Deadline

pytestmark = pytest.mark.timeout(10)


async def test_our_own_work_past_the_deadline_is_a_timeout_not_the_bodys() -> None:
    deadline = Deadline(0.05, 1.0)
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.sleep(1)
    assert deadline.body_late is False


async def test_a_body_past_its_own_deadline_is_body_late() -> None:
    deadline = Deadline(1.0, 0.05)  # the body's shorter: re-armed for it
    with pytest.raises(TimeoutError):
        async with deadline:
            deadline.body_started()
            await asyncio.sleep(1)
    assert deadline.body_late is True


async def test_the_time_a_body_takes_does_not_count_against_ours() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Deadline(0.2, 1.0) as deadline:
        deadline.body_started()
        await asyncio.sleep(0.3)  # past our own 0.2 s: held
        deadline.body_done()
        await asyncio.sleep(0.1)  # 0.1 of our 0.2 s
    with pytest.raises(TimeoutError):
        async with Deadline(0.2, 1.0) as deadline:
            deadline.body_started()
            await asyncio.sleep(0.3)
            deadline.body_done()
            await asyncio.sleep(0.3)  # 0.3 of our 0.2 s
    assert deadline.body_late is False
    assert loop.time() - started < 2


async def test_lifted_there_is_no_deadline_and_other_cancels_pass_through() -> None:
    async with Deadline(0.05, 0.05) as deadline:
        deadline.lift()
        await asyncio.sleep(0.15)

    async def cancelled_from_outside() -> None:
        async with Deadline(5, 5):
            await asyncio.sleep(5)
    task = asyncio.get_running_loop().create_task(cancelled_from_outside())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
