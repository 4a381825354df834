"""Helpers for the robustness tests on a live server: metrics, waits, held and abandoned requests,
the server's resident memory."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil

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


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    """One sample of a Prometheus metric (0 when it has not been observed yet)."""
    text = client.get("/metrics").text
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.findall(pattern, text, re.M)
    return float(found[0]) if found else 0.0


def in_flight(client: httpx.Client) -> float:
    return metric(client, "glore_in_flight_requests")


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "it") -> float:
    """Poll until `predicate()`; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


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


class RawRequest:
    """A POST over a raw socket, so a test can hold its body back or hang up mid-request."""

    def __init__(
        self,
        url: str,
        path: str,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        hold_body: bool = False,
    ) -> None:
        parsed = urlparse(url)
        self.body = json.dumps(payload).encode()
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=120)
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {parsed.netloc}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.sent = 1 if hold_body else len(self.body)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + self.body[: self.sent])

    def hang_up(self) -> None:
        self.sock.close()

    def finish(self) -> tuple[int, dict[str, Any]]:
        self.sock.sendall(self.body[self.sent :])
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body)
