"""The project's Dockerfile, built and run with podman: the image serves a mounted run as uid
10001, its HEALTHCHECK passes, and `podman stop` lets an in-flight /solve finish.

The base is Debian bookworm made here (registries are out of reach) in place of
python:3.11-slim-bookworm; everything else is the Dockerfile users build.
"""

from __future__ import annotations

import concurrent.futures
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.deploy import podman
from tests.integration.deploy.harness import free_port, wait_until
from tests.support.tiny_models import tiny_problems

pytestmark = pytest.mark.timeout(3600)  # a cold build installs torch and vLLM (minutes)

UID = "10001"


@dataclass
class Container:
    name: str
    url: str

    def logs(self) -> str:
        out = podman.podman("logs", self.name, check=False)
        return (out.stdout + out.stderr)[-4000:]


@pytest.fixture(scope="module")
def container(glore_image: str, mountable_run: Path) -> Iterator[Container]:
    port = free_port()
    handle = Container(f"glore-test-{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:{port}")
    run = [
        "run",
        "--detach",
        "--init",  # as compose's `init: true`: catatonit forwards SIGTERM to the server
        "--name",
        handle.name,
        "--publish",
        f"127.0.0.1:{port}:8000",
        "--volume",
        f"{mountable_run}:/models:ro",
        "--env",
        "GLORE_SHUTDOWN_TIMEOUT_S=45",
        "--env",
        "OMP_NUM_THREADS=1",
        # The drain test's eight heavy solves run side by side rather than one after another.
        "--env",
        "GLORE_LIMITS__WEIGH_BY_COST=false",
        "--stop-timeout",
        "60",
        glore_image,
    ]
    try:
        podman.podman(*run)

        def ready() -> bool:
            state = podman.podman("inspect", "--format", "{{.State.Status}}", handle.name)
            if state.stdout.strip() not in ("running", "created"):
                pytest.fail(f"the container stopped ({state.stdout.strip()}):\n{handle.logs()}")
            return httpx.get(f"{handle.url}/ready", timeout=5).status_code == 200

        wait_until(ready, timeout=240, interval=1, what="/ready of the container")
        yield handle
    finally:
        podman.podman("rm", "--force", "--time", "5", handle.name, check=False, timeout=120)


def _solve(url: str, **extra: object) -> httpx.Response:
    question = tiny_problems(1, seed=3)[0].question
    body = {"question": question, "max_new_tokens": 32, **extra}
    return httpx.post(f"{url}/solve", json=body, timeout=180)


def test_the_image_serves_a_mounted_run_ready_and_solving(container: Container) -> None:
    assert httpx.get(f"{container.url}/ready", timeout=10).status_code == 200
    r = _solve(container.url)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "glore" and body["steps"], body


def _process(pid: int) -> tuple[str, str]:
    """(command line, real uid) of a host process, read from /proc (the image has no ps)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    uid = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert uid, pid
    return cmdline, uid.group(1)


def test_the_server_runs_as_uid_10001_under_an_init(container: Container) -> None:
    pid = int(podman.podman("inspect", "--format", "{{.State.Pid}}", container.name).stdout)
    init, _ = _process(pid)
    # PID 1 is the init (catatonit, as compose's `init: true`), which forwards SIGTERM.
    assert "podman-init" in init or "catatonit" in init, init
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    servers = [_process(int(c)) for c in children]
    assert [uid for cmd, uid in servers if "glore serve" in cmd] == [UID], servers
    user = podman.podman("inspect", "--format", "{{.Config.User}}", container.name).stdout
    assert user.strip() == f"{UID}:{UID}"


def test_the_healthcheck_passes(container: Container) -> None:
    inspect = podman.podman(
        "inspect", "--format", "{{json .Config.Healthcheck.Test}}", container.name
    ).stdout
    assert "/ready" in inspect, f"the image lost its HEALTHCHECK (docker format?): {inspect}"
    proc = podman.podman("healthcheck", "run", container.name, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_podman_stop_lets_in_flight_solves_finish(container: Container) -> None:
    # Eight at once (the server's admission limit), each a best-of-16 of 96 tokens: seconds of
    # work, so they are still running when the SIGTERM arrives (a tiny greedy solve ends in
    # about 0.25 s, before `podman stop` delivers it: "draining 0" in a loaded CI run).
    n = 8

    def metric(text: str, name: str) -> float:
        pattern = rf"^{name}(?:\{{[^}}]*\}})? (\S+)$"
        return sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE))

    def solves() -> float:
        text = httpx.get(f"{container.url}/metrics", timeout=5).text
        return metric(text, "glore_solves_total") + metric(text, "glore_in_flight_requests")

    before = solves()

    def all_admitted() -> bool:
        return solves() - before >= n

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        pending = [
            pool.submit(
                _solve, container.url, strategy="best_of_n", n=16, seed=1, max_new_tokens=96
            )
            for _ in range(n)
        ]
        wait_until(all_admitted, timeout=120, interval=0.02, what=f"{n} solves admitted")
        stop = podman.podman("stop", "--time", "60", container.name, check=False, timeout=120)
        responses = [p.result(timeout=180) for p in pending]
    assert stop.returncode == 0, stop.stderr
    assert [r.status_code for r in responses] == [200] * n, [r.text[:300] for r in responses]
    state = podman.podman(
        "inspect", "--format", "{{.State.ExitCode}}", container.name
    ).stdout.strip()
    out = podman.podman("logs", container.name, check=False)
    logs = out.stdout + out.stderr
    drained = re.search(r"draining (\d+) in-flight", logs)
    assert drained and int(drained.group(1)) >= 1, logs[-3000:]
    assert "Application shutdown complete" in logs, logs[-3000:]
    # uvicorn re-raises the SIGTERM it caught once it has shut down: 143 is a clean stop, and
    # what podman reports for it (a kill after the grace period would be 137).
    assert state in ("0", "143"), f"exit code {state}; logs:\n{logs[-3000:]}"
