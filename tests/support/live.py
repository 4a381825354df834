"""Helpers for tests against a live server: Prometheus samples, polling, and raw HTTP requests
whose body can be held back or abandoned."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import httpx


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    """One sample of a Prometheus metric (0 when it has not been observed yet)."""
    text = client.get("/metrics").text
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.findall(pattern, text, re.M)
    return float(found[0]) if found else 0.0


def in_flight(client: httpx.Client) -> float:
    """The in-flight gauge; it is exported from start-up, so its absence fails the test."""
    [value] = re.findall(r"^glore_in_flight_requests (\S+)$", client.get("/metrics").text, re.M)
    return float(value)


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "it") -> float:
    """Poll until `predicate()`; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


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
