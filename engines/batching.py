"""A micro-batcher: merges concurrent requests into shared batches run on one worker thread.

Callers await from any event loop; the blocking model call never runs on a loop. A caller that
is cancelled drops its items: they are skipped if still queued and reported to a running batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

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


@dataclass(frozen=True)
class BatcherStats:
    batches: int
    items: int
    largest_batch: int


class MicroBatcher(Generic[T, R]):
    """Collects items for up to `wait_ms` (or `max_batch_size` items) and runs `fn` on them."""

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
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000.0
        self.name = name
        self._queue: queue.SimpleQueue[_Pending[T] | object] = queue.SimpleQueue()
        self._closed = False
        self._crash: BaseException | None = None
        self._batches = 0
        self._items = 0
        self._largest = 0
        # Batches that failed and were retried row by row (see _run_batch).
        self.retried_batches = 0
        self._thread = threading.Thread(target=self._run, name=f"glore-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ caller side

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, in order. Cancelling the awaiting task drops the items' work."""
        self._check_alive()
        pending = [_Pending(item, concurrent.futures.Future()) for item in items]
        for p in pending:
            self._queue.put(p)
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(p.future) for p in pending)))
        finally:
            # On cancellation or a failure, the rest of this caller's items are no longer wanted:
            # queued ones are cancelled outright, running ones are flagged for the batch.
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
        return EngineHealth(True, f"{self._batches} batches, {self._items} items")

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._items, self._largest)

    async def close(self) -> None:
        """Stop taking work, fail what is queued, and wait for the running batch to finish."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def _check_alive(self) -> None:
        state = self.health()
        if not state.healthy:
            raise EngineError(f"{self.name} is not serving: {state.detail}")

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
        """Block for one item, then gather more until the window closes or the batch is full."""
        batch: list[_Pending[T]] = []
        first = self._queue.get()
        if first is _STOP:
            return batch, True
        assert isinstance(first, _Pending)
        if first.future.set_running_or_notify_cancel():
            batch.append(first)
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
            assert isinstance(nxt, _Pending)
            # Items whose caller was cancelled while queued are dropped here, unrun.
            if nxt.future.set_running_or_notify_cancel():
                batch.append(nxt)
        return batch, False

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
        while True:
            try:
                p = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(p, _Pending) and p.future.set_running_or_notify_cancel():
                p.future.set_exception(err)
