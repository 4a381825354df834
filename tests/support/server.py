"""Start a live glore server (`glore serve`) in a subprocess on a free loopback port.

Shared by the service's end-to-end tests and the deploy tests:
`start_server(run_dir, env={...}) -> ServerHandle(url, process, stop())`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from bench.live import free_port, spawn_serve, stop_process

__all__ = ["ROOT", "ServerHandle", "free_port", "start_server", "wait_for"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerHandle:
    """A running server. `stop()` sends SIGTERM (graceful), then SIGKILL after `timeout`."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def logs(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 30) -> int | None:
        """Stop the server (idempotent); returns its exit code."""
        return stop_process(self.process, timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for(
    handle: ServerHandle, path: str = "/ready", *, timeout: float = 180, status: int = 200
) -> None:
    """Poll `path` until it answers `status`; fail with the server's log if it dies or stalls."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(base_url=handle.url, timeout=5) as client:
        while time.monotonic() < deadline:
            if not handle.alive():
                raise RuntimeError(
                    f"server exited with {handle.process.returncode} before {path} answered "
                    f"{status}; log:\n{handle.logs()[-4000:]}"
                )
            try:
                r = client.get(path)
                if r.status_code == status:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.2)
    handle.stop(timeout=5)
    raise TimeoutError(
        f"{path} did not answer {status} within {timeout} s (last: {last}); "
        f"log:\n{handle.logs()[-4000:]}"
    )


def start_server(
    run_dir: str | Path | None,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    *,
    wait: str | None = "/ready",
    timeout: float = 180,
    args: Sequence[str] = (),
    uvicorn_factory: bool = False,
) -> ServerHandle:
    """Run `glore serve --run RUN_DIR --host 127.0.0.1 --port PORT` with `env` added to this
    process's environment, and wait until `wait` (default /ready) answers 200 (None: don't).

    With `uvicorn_factory`, run `uvicorn --factory glore.app:create_app` instead (as a
    container might), with the run directory passed as GLORE_RUN_DIR.

    The server's output goes to a log file (`handle.logs()`), so a full pipe never blocks it.
    """
    port = port or free_port()
    process, log_path, full_env = spawn_serve(
        run_dir,
        port,
        {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})},
        args=args,
        uvicorn_factory=uvicorn_factory,
        cwd=ROOT,
    )
    handle = ServerHandle(f"http://127.0.0.1:{port}", port, process, log_path, full_env)
    if wait is not None:
        wait_for(handle, wait, timeout=timeout)
    return handle
