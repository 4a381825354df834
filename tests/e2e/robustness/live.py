"""Helpers for the robustness tests on a live server: slow solves and the server's resident memory.
Metrics, waits and raw requests come from tests.support.live and are re-exported here."""

from __future__ import annotations

import contextlib

import psutil

from tests.support.live import RawRequest, in_flight, metric, wait_until
from tests.support.tiny_models import tiny_problems

QUESTIONS = [p.question for p in tiny_problems(64, seed=7)]
# A solve that keeps the tiny policy busy for seconds of real work (256 seeded samples, long).
SLOW_SOLVE = {
    "question": QUESTIONS[0],
    "strategy": "best_of_n",
    "n": 256,
    "temperature": 2.0,
    "seed": 1,
    "max_new_tokens": 480,
}
SLOW_ENV = {"GLORE_LIMITS__MAX_N": "256"}


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children (vLLM runs its engine in children)."""
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def tree_cpu_seconds(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


__all__ = [
    "QUESTIONS",
    "SLOW_ENV",
    "SLOW_SOLVE",
    "RawRequest",
    "in_flight",
    "metric",
    "tree_cpu_seconds",
    "tree_rss",
    "wait_until",
]
