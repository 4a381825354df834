"""Admission control for the solve routes: a weighted slot pool with a bounded FIFO queue.

A request takes slots only once its body has been read (a client that sends headers and then
stalls holds nothing, and gets 408 after `body_timeout_s`). Beyond `max_in_flight` slots,
requests wait in line; 429 (with a Retry-After from the measured service time) comes only when
the line is full or the expected wait would outlast the request's time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from service.metrics import Metrics
from service.settings import Defaults, Limits

# How fast the service-time estimate follows new observations (an exponential moving average).
_EWMA = 0.2
# Strategies whose cost grows with their sample count.
_SAMPLING = {"best_of_n", "self_consistency"}


class Refused(Exception):
    """The queue is full, or the expected wait is longer than the request may take."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass
class _Waiter:
    weight: int
    future: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Admission:
    """`capacity` slots; a request holds `weight` of them while it is served, FIFO beyond."""

    def __init__(self, limits: Limits, defaults: Defaults, metrics: Metrics) -> None:
        self.limits, self.defaults, self.metrics = limits, defaults, metrics
        self.capacity = limits.max_in_flight
        self.used = 0
        self.queue: deque[_Waiter] = deque()
        # Seconds one slot stays busy, measured; until the first answer, the configured guess.
        self.service_s = float(max(limits.retry_after_s, 1))

    # ------------------------------------------------------------ cost

    def weight(self, body: bytes) -> int:
        """Slots a request takes: 1, or with `weigh_by_cost` its samples × max tokens in units
        of one default generation (at most the whole pool). A body that is not JSON weighs 1;
        the app answers it with 400."""
        if not self.limits.weigh_by_cost:
            return 1
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or a nesting bomb
            return 1
        if not isinstance(data, dict):
            return 1
        samples = _int(data.get("n"), data.get("num_samples")) or self.defaults.n
        strategy = data.get("strategy")
        if not (isinstance(strategy, str) and strategy in _SAMPLING):  # any JSON may come here
            samples = 1
        tokens = (
            _int(
                data.get("max_new_tokens"),
                data.get("max_completion_tokens"),
                data.get("max_tokens"),
            )
            or self.defaults.max_new_tokens
        )
        samples = min(samples, self.limits.max_n)
        tokens = min(tokens, self.limits.max_new_tokens)
        units = samples * tokens / self.defaults.max_new_tokens
        return max(1, min(self.capacity, math.ceil(units)))

    # ------------------------------------------------------------ slots

    def expected_wait_s(self, weight: int) -> float:
        """Seconds until `weight` slots free up for a newcomer, from the measured service time:
        the work ahead of it (in use and queued) drains `capacity` slots per service time."""
        ahead = self.used + sum(w.weight for w in self.queue) + weight - self.capacity
        return max(0.0, ahead / self.capacity * self.service_s)

    async def acquire(self, weight: int, time_limit_s: float) -> float:
        """Wait for `weight` slots; returns the seconds waited. Raises Refused at once when the
        queue is full or the expected wait exceeds `time_limit_s`."""
        if not self.queue and self.used + weight <= self.capacity:
            self.used += weight
            return 0.0
        wait = self.expected_wait_s(weight)
        if len(self.queue) >= self.limits.max_queue:
            raise Refused(
                f"too many requests in flight ({self.capacity}) and queued "
                f"({self.limits.max_queue}); retry after {self._retry(wait)} s",
                self._retry(wait),
            )
        if wait > time_limit_s:
            raise Refused(
                f"the expected wait ({wait:.1f} s) exceeds the request's time limit "
                f"({time_limit_s:g} s); retry after {self._retry(wait)} s",
                self._retry(wait),
            )
        waiter = _Waiter(weight)
        self.queue.append(waiter)
        self.metrics.queue_length.set(len(self.queue))
        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), time_limit_s)
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(weight, None)  # granted just as we gave up: hand the slots on
            else:
                waiter.future.cancel()
                self._remove(waiter)
            raise
        finally:
            self.metrics.queue_length.set(len(self.queue))
        waited = time.perf_counter() - start
        self.metrics.queue_wait.observe(waited)
        return waited

    def release(self, weight: int, served_s: float | None) -> None:
        """Give back `weight` slots (after `served_s` seconds of service) and wake the line."""
        self.used -= weight
        if served_s is not None:
            self.service_s += _EWMA * (served_s - self.service_s)
        self._wake()

    def _wake(self) -> None:
        # FIFO: the head waits until it fits, so a heavy request is not starved by light ones.
        while self.queue and self.used + self.queue[0].weight <= self.capacity:
            waiter = self.queue.popleft()
            if waiter.future.done():
                continue
            self.used += waiter.weight
            waiter.future.set_result(None)
        self.metrics.queue_length.set(len(self.queue))

    def _remove(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self.queue.remove(waiter)
        self._wake()  # the head may have been the one blocking the rest

    def _retry(self, wait_s: float) -> int:
        return max(self.limits.retry_after_s, math.ceil(wait_s))


def _int(*values: object) -> int | None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
