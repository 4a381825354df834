"""A micro-batcher: merges concurrent requests into shared batches run on one worker thread.

Callers await from any event loop; the blocking model call never runs on a loop. A caller that
is cancelled drops its items: they are skipped if still queued and reported to a running batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from engines.base import EngineError, EngineHealth

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# fn(items, cancelled) -> one result per item; `cancelled()` says, per item, whether its caller
# has gone away, so a long batch (generation) can stop working on those rows.
BatchFn = Callable[[list[T], Callable[[], list[bool]]], list[R]]


@dataclass
class _Pending(Generic[T]):
    item: T
    future: concurrent.futures.Future
    # Set when the caller stops waiting; a running future cannot be cancelled, so this flag is
    # how a batch in progress learns that a row's result is no longer wanted.
    abandoned: bool = False


_STOP = object()


class _Worker(Generic[T, R]):
    """What both batchers share: one worker thread fed by a queue, callers awaiting futures from
    any event loop, and the health and closing of that thread. A subclass says how a caller's
    items are queued (`_enqueue`), what its health reports (`_detail`) and runs `_run`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"glore-{name}", daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _enqueue(self, pending: list[_Pending[T]]) -> None:
        raise NotImplementedError

    def _detail(self) -> str:
        raise NotImplementedError

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, in order. Cancelling the awaiting task drops the items' work."""
        self._check_alive()
        pending = [_Pending(item, concurrent.futures.Future()) for item in items]
        if pending:
            self._enqueue(pending)
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(p.future) for p in pending)))
        finally:
            # On cancellation or a failure, the rest of this caller's items are no longer
            # wanted: queued ones are cancelled outright, running ones are flagged for the worker.
            for p in pending:
                p.abandoned = True
                p.future.cancel()

    def health(self) -> EngineHealth:
        if self._closed:
            return EngineHealth(False, "closed")
        if self._crash is not None:
            return EngineHealth(False, f"worker crashed: {self._crash!r}")
        if not self._thread.is_alive():
            return EngineHealth(False, "worker thread is not running")
        return EngineHealth(True, self._detail())

    async def close(self) -> None:
        """Stop taking work, fail what is queued, and wait for the running work to finish."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def _check_alive(self) -> None:
        state = self.health()
        if not state.healthy:
            raise EngineError(f"{self.name} is not serving: {state.detail}")


@dataclass(frozen=True)
class BatcherStats:
    batches: int
    items: int
    largest_batch: int


class MicroBatcher(_Worker[T, R]):
    """Runs `fn` on queued items: a lone item at once, else what is queued plus what arrives
    within `wait_ms` (up to `max_batch_size` items)."""

    def __init__(
        self,
        fn: BatchFn[T, R],
        *,
        max_batch_size: int = 64,
        wait_ms: float = 5.0,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if wait_ms < 0:
            raise ValueError("batch_wait_ms must be >= 0")
        super().__init__(name)
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000.0
        self._carry: list[_Pending[T]] = []  # a call's items that did not fit the last batch
        self._batches = 0
        self._items = 0
        self._largest = 0
        # Batches that failed and were retried row by row (see _run_batch).
        self.retried_batches = 0
        self._thread.start()

    # ------------------------------------------------------------ caller side

    def _enqueue(self, pending: list[_Pending[T]]) -> None:
        # One entry per submit call: a caller's items reach the worker together, so an idle
        # worker never starts a batch with only the first of them.
        self._queue.put(pending)

    def _detail(self) -> str:
        return f"{self._batches} batches, {self._items} items"

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._items, self._largest)

    # ------------------------------------------------------------ worker side

    def _run(self) -> None:
        try:
            while True:
                batch, stop = self._collect()
                if batch:
                    self._run_batch(batch)
                if stop:
                    break
        except BaseException as exc:  # the worker must never die silently
            self._crash = exc
            log.exception("%s worker crashed", self.name)
        finally:
            self._fail_queued()

    def _collect(self) -> tuple[list[_Pending[T]], bool]:
        """Block for work, then gather more until the window closes or the batch is full."""
        batch: list[_Pending[T]] = []
        if not self._carry:
            first = self._queue.get()
            if first is _STOP:
                return batch, True
            assert isinstance(first, list)
            self._carry = list(first)  # a copy: the caller keeps its own list
        self._take_carry(batch)
        if self._carry or self._queue.empty():
            # Full, or idle: nothing else is waiting, so waiting for company would only add
            # latency. Under load, callers queue while a batch runs and the next takes them.
            return batch, False
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                nxt = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True
            assert isinstance(nxt, list)
            self._carry = list(nxt)
            self._take_carry(batch)
        return batch, False

    def _take_carry(self, batch: list[_Pending[T]]) -> None:
        while self._carry and len(batch) < self.max_batch_size:
            p = self._carry.pop(0)
            # Items whose caller was cancelled while queued are dropped here, unrun.
            if p.future.set_running_or_notify_cancel():
                batch.append(p)

    def _run_batch(self, batch: list[_Pending[T]]) -> None:
        self._batches += 1
        self._items += len(batch)
        self._largest = max(self._largest, len(batch))

        def cancelled() -> list[bool]:
            return [p.abandoned for p in batch]

        try:
            results = self._fn([p.item for p in batch], cancelled)
            if len(results) != len(batch):
                raise EngineError(f"{self.name}: {len(results)} results for {len(batch)} items")
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            # One row may have failed the batch (a bad input, an OOM on its length): retry each
            # row alone, so that only the rows that fail on their own get an error.
            log.warning(
                "%s: a batch of %d failed (%r); retrying its rows one by one",
                self.name,
                len(batch),
                exc,
            )
            self.retried_batches += 1
            for p in batch:
                if p.abandoned:
                    self._fail([p], exc)  # nobody waits for it: not worth a model call
                elif not p.future.done():
                    self._run_batch([p])
            return
        except BaseException as exc:
            self._fail(batch, EngineError(f"{self.name} worker crashed: {exc!r}"))
            raise
        for p, r in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)

    @staticmethod
    def _fail(batch: list[_Pending[T]], exc: BaseException) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)

    def _fail_queued(self) -> None:
        err = EngineError(f"{self.name} is closed" if self._closed else f"{self.name} crashed")
        left, self._carry = self._carry, []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(entry, list):
                left += entry
        for p in left:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(err)


class Decoder(Protocol[T, R]):
    """Step-wise work for a ContinuousBatcher: rows join and leave between steps.

    Every method runs on the batcher's worker thread. `admit` and `step` return the rows that
    finished, by key; a finished row has left the decoder.
    """

    def admit(self, rows: dict[int, T]) -> dict[int, R]: ...

    def step(self) -> dict[int, R]: ...

    def drop(self, keys: Sequence[int]) -> None: ...

    def reset(self) -> None: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class ContinuousStats:
    steps: int
    items: int
    largest_batch: int
    # Rows that joined while other rows were decoding: what static batching cannot do.
    joined_running: int


class ContinuousBatcher(_Worker[T, R]):
    """Runs a Decoder step by step on one worker thread: queued items join the running batch at
    every step (up to `max_batch_size` rows) and finished rows leave it, so a request never waits
    for a batch's longest row. Callers await from any event loop, as with MicroBatcher."""

    def __init__(self, decoder: Decoder[T, R], *, max_batch_size: int = 64, name: str) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        super().__init__(name)
        self._decoder = decoder
        self.max_batch_size = max_batch_size
        self._live: dict[int, _Pending[T]] = {}
        self._next_key = 0
        self._steps = self._items = self._largest = self._joined_running = 0
        self.retried_batches = 0  # running batches that failed and were rerun row by row
        self._thread.start()

    # ------------------------------------------------------------ caller side

    def _enqueue(self, pending: list[_Pending[T]]) -> None:
        for p in pending:
            self._queue.put(p)

    def _detail(self) -> str:
        return f"{self._steps} steps, {self._items} items"

    @property
    def stats(self) -> ContinuousStats:
        return ContinuousStats(self._steps, self._items, self._largest, self._joined_running)

    @property
    def running(self) -> int:
        """Rows in the batch now (read from any thread; a snapshot)."""
        return len(self._live)

    # ------------------------------------------------------------ worker side

    def _run(self) -> None:
        stopping = False
        try:
            while True:
                # Idle: block for work. Busy: take what is queued now, never wait for more.
                joining, stop = self._take(block=not self._live and not stopping)
                stopping = stopping or stop
                if stopping and not self._live and not joining:
                    break
                self._drop_abandoned()
                if joining:
                    self._guarded(functools.partial(self._admit, joining))
                if self._live:
                    self._guarded(self._decoder.step)
                    self._steps += 1
        except BaseException as exc:  # the worker must never die silently
            self._crash = exc
            log.exception("%s worker crashed", self.name)
            self._fail_live(EngineError(f"{self.name} worker crashed: {exc!r}"))
        finally:
            self._fail_queued()

    def _take(self, *, block: bool) -> tuple[dict[int, _Pending[T]], bool]:
        room = self.max_batch_size - len(self._live)
        joining: dict[int, _Pending[T]] = {}
        stop = False
        while len(joining) < room:
            try:
                nxt = self._queue.get() if block and not joining else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            assert isinstance(nxt, _Pending)
            # Items whose caller was cancelled while queued are dropped here, unrun.
            if nxt.future.set_running_or_notify_cancel():
                joining[self._next_key] = nxt
                self._next_key += 1
        return joining, stop

    def _admit(self, joining: dict[int, _Pending[T]]) -> dict[int, R]:
        if self._live:
            self._joined_running += len(joining)
        self._live.update(joining)
        self._items += len(joining)
        self._largest = max(self._largest, len(self._live))
        return self._decoder.admit({k: p.item for k, p in joining.items()})

    def _guarded(self, fn: Callable[[], dict[int, R]]) -> None:
        """Run one admit or step; resolve finished rows. On an error the decoder's batch state
        can no longer be trusted: it starts afresh, and every live row is run again alone, so
        only a row that fails on its own gets the error (a poison row, an OOM on its length)."""
        try:
            finished = fn()
        except Exception as exc:
            self._isolate(exc)
            return
        for key, result in finished.items():
            p = self._live.pop(key)
            if not p.future.done():
                p.future.set_result(result)

    def _isolate(self, exc: Exception) -> None:
        live, self._live = self._live, {}
        self._decoder.reset()
        self.retried_batches += 1
        log.warning(
            "%s: a running batch of %d failed (%r); running its rows one by one",
            self.name,
            len(live),
            exc,
        )
        for key, p in live.items():
            if p.abandoned or p.future.done():
                continue
            try:
                finished = dict(self._decoder.admit({key: p.item}))
                while key not in finished:
                    if not self._decoder.size:
                        raise EngineError(f"{self.name}: a row left the batch unfinished")
                    finished.update(self._decoder.step())
                    self._steps += 1
            except Exception as row_exc:
                self._decoder.reset()
                p.future.set_exception(row_exc)
                continue
            p.future.set_result(finished[key])

    def _drop_abandoned(self) -> None:
        gone = [k for k, p in self._live.items() if p.abandoned]
        if gone:
            self._decoder.drop(gone)
            for k in gone:
                del self._live[k]

    def _fail_live(self, exc: BaseException) -> None:
        live, self._live = self._live, {}
        for p in live.values():
            if not p.future.done():
                p.future.set_exception(exc)

    def _fail_queued(self) -> None:
        err = EngineError(f"{self.name} is closed" if self._closed else f"{self.name} crashed")
        while True:
            try:
                p = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(p, _Pending) and p.future.set_running_or_notify_cancel():
                p.future.set_exception(err)
