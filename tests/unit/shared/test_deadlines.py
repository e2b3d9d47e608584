"""``shared.deadlines``: asyncio.timeout's meaning, one sweeping timer per loop."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from shared.deadlines import RESOLUTION_S, Deadline, sweeper, within


async def test_a_wait_that_ends_in_time_is_not_cut_and_leaves_no_timer() -> None:
    with within(1.0):
        await asyncio.sleep(0.01)
    assert not sweeper().waiting
    await asyncio.sleep(2 * RESOLUTION_S)  # the sweep scheduled on entry runs once, finds none
    assert not sweeper().scheduled


async def test_a_wait_past_its_deadline_raises_timeout_error_within_the_resolution() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError), within(0.1):
        await asyncio.sleep(10)
    waited = time.monotonic() - started
    assert 0.1 <= waited < 0.1 + RESOLUTION_S + 0.2
    task = asyncio.current_task()
    assert task is not None
    assert not task.cancelling()  # the deadline's cancellation was taken back


async def test_a_deadline_already_past_raises_before_awaiting() -> None:
    reached = False
    with pytest.raises(TimeoutError), Deadline(time.monotonic() - 1):
        reached = True
    assert not reached
    assert not sweeper().waiting


async def test_one_timer_serves_many_waits_and_cuts_only_the_late_ones() -> None:
    async def wait(seconds: float) -> str:
        with within(0.1):
            await asyncio.sleep(seconds)
        return "done"

    results = await asyncio.gather(
        *(wait(0.01) for _ in range(20)), *(wait(5) for _ in range(20)), return_exceptions=True
    )
    assert results[:20] == ["done"] * 20
    assert [type(r) for r in results[20:]] == [TimeoutError] * 20
    assert not sweeper().waiting


async def test_a_cancellation_that_is_not_the_deadline_stays_a_cancellation() -> None:
    async def wait() -> None:
        with within(5):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not sweeper().waiting


async def test_the_deadline_does_not_cancel_what_follows_the_block() -> None:
    with within(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05 + 2 * RESOLUTION_S)  # past the deadline, outside the block


async def test_each_loop_has_its_own_sweeper() -> None:
    here = sweeper()
    assert sweeper() is here

    def other() -> object:
        async def get() -> object:
            return sweeper()

        return asyncio.run(get())

    assert await asyncio.to_thread(other) is not here


def test_a_closed_loop_is_not_kept_alive_by_its_sweeper() -> None:
    async def wait() -> None:
        with within(1.0):
            await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(wait())
    loop.run_until_complete(asyncio.sleep(2 * RESOLUTION_S))  # the sweep runs, finds none
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None
