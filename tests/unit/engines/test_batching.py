"""The micro-batcher: merging, limits, cancellation, errors and health, with a plain function."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from engines.base import EngineError
from engines.batching import MicroBatcher


class Recorder:
    """A batch function that records the batches it saw and the thread it ran on."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.delay = delay

    def __call__(self, items: list[int], cancelled: Callable[[], list[bool]]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        return [x * 10 for x in items]


async def test_concurrent_callers_are_merged_into_one_batch() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=64, wait_ms=50)
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(16)))
    assert results == [[i * 10] for i in range(16)]
    assert len(fn.batches) < 16
    assert max(len(b) for b in fn.batches) > 1
    await batcher.close()


async def test_batches_never_exceed_the_maximum_size() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=4, wait_ms=50)
    assert await batcher.submit(list(range(10))) == [x * 10 for x in range(10)]
    assert max(len(b) for b in fn.batches) <= 4
    assert sorted(x for b in fn.batches for x in b) == list(range(10))
    await batcher.close()


async def test_the_blocking_call_runs_off_the_event_loop_thread() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, wait_ms=0)
    await batcher.submit([1])
    assert threading.get_ident() not in fn.threads
    await batcher.close()


async def test_a_slow_batch_does_not_block_the_event_loop() -> None:
    batcher = MicroBatcher(Recorder(delay=0.3), wait_ms=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await batcher.submit([1])
    task.cancel()
    assert ticks >= 10
    await batcher.close()


async def test_cancelled_caller_items_still_queued_are_never_run() -> None:
    fn = Recorder(delay=0.3)
    batcher = MicroBatcher(fn, max_batch_size=1, wait_ms=0)
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.05)  # item 1 is now running; the next ones queue behind it
    doomed = asyncio.create_task(batcher.submit([2, 3]))
    await asyncio.sleep(0.01)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert await first == [10]
    assert await batcher.submit([4]) == [40]
    assert [x for b in fn.batches for x in b] == [1, 4]
    await batcher.close()


async def test_a_running_batch_learns_that_its_caller_went_away() -> None:
    seen: list[list[bool]] = []
    started = threading.Event()

    def fn(items: list[int], cancelled: Callable[[], list[bool]]) -> list[int]:
        if items == [3]:
            return items
        started.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(cancelled()):
            time.sleep(0.01)
        seen.append(cancelled())
        return items

    batcher = MicroBatcher(fn, wait_ms=0)
    task = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.to_thread(started.wait, 5)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await batcher.submit([3])  # served once the abandoned batch stopped early
    assert time.monotonic() - t0 < 4
    assert seen[0] == [True, True]
    await batcher.close()


async def test_an_error_in_a_batch_reaches_its_callers_and_the_batcher_lives_on() -> None:
    calls = 0

    def fn(items: list[int], cancelled: Callable[[], list[bool]]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad batch")
        return items

    batcher = MicroBatcher(fn, wait_ms=0)
    with pytest.raises(ValueError, match="bad batch"):
        await batcher.submit([1])
    assert await batcher.submit([2]) == [2]
    assert batcher.health().healthy
    await batcher.close()


async def test_a_poison_row_fails_alone_and_its_batch_mates_are_answered() -> None:
    seen: list[list[int]] = []

    def fn(items: list[int], cancelled: Callable[[], list[bool]]) -> list[int]:
        seen.append(list(items))
        if 13 in items:
            raise RuntimeError("row 13 overflows")
        return [x * 10 for x in items]

    batcher = MicroBatcher(fn, max_batch_size=64, wait_ms=50)
    results = await asyncio.gather(
        *(batcher.submit([i]) for i in range(10, 18)), return_exceptions=True
    )
    assert isinstance(results[3], RuntimeError)
    assert [r for i, r in enumerate(results) if i != 3] == [
        [i * 10] for i in range(10, 18) if i != 13
    ]
    assert max(len(b) for b in seen) > 1  # they did share a batch
    assert batcher.retried_batches >= 1
    assert batcher.health().healthy
    await batcher.close()


async def test_a_closed_batcher_is_unhealthy_and_refuses_work() -> None:
    batcher = MicroBatcher(Recorder(), wait_ms=0)
    assert batcher.health().healthy
    await batcher.close()
    state = batcher.health()
    assert not state.healthy and "closed" in state.detail
    with pytest.raises(EngineError, match="closed"):
        await batcher.submit([1])


async def test_a_crashed_worker_is_reported_unhealthy() -> None:
    class Fatal(BaseException):
        pass

    def fn(items: list[int], cancelled: Callable[[], list[bool]]) -> list[int]:
        raise Fatal()

    batcher = MicroBatcher(fn, wait_ms=0)
    with pytest.raises(EngineError, match="crashed"):
        await batcher.submit([1])
    for _ in range(200):
        if not batcher.health().healthy:
            break
        await asyncio.sleep(0.01)
    state = batcher.health()
    assert not state.healthy and "crashed" in state.detail
    with pytest.raises(EngineError):
        await batcher.submit([2])


def test_one_batcher_serves_callers_from_successive_event_loops() -> None:
    batcher = MicroBatcher(Recorder(), wait_ms=0)
    assert asyncio.run(batcher.submit([1])) == [10]
    assert asyncio.run(batcher.submit([2])) == [20]
    asyncio.run(batcher.close())


def test_bad_settings_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        MicroBatcher(Recorder(), wait_ms=-1)


async def test_an_idle_batcher_dispatches_a_lone_item_without_waiting_its_window() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=64, wait_ms=2000)
    started = time.monotonic()
    assert await batcher.submit([3]) == [30]
    assert time.monotonic() - started < 1.0
    await batcher.close()


async def test_one_callers_items_reach_an_idle_worker_as_one_batch() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=64, wait_ms=0)
    for _ in range(20):
        assert await batcher.submit(list(range(6))) == [x * 10 for x in range(6)]
    assert [len(b) for b in fn.batches] == [6] * 20
    await batcher.close()
