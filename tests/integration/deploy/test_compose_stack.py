"""deploy/docker-compose.yml brought up by podman-compose: two replicas of the built image behind
the project's nginx.conf, scraped by Prometheus with the project's prometheus.yml.

The only override (containers/compose.test.yml) swaps the nginx and Prometheus images for Debian
ones built here, since registries are out of reach; Grafana (no Debian package) is not started.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.deploy import podman
from tests.integration.deploy.harness import DEPLOY, ROOT, wait_until
from tests.integration.deploy.stack import Stack, running_stack
from tests.support.tiny_models import tiny_problems

pytestmark = pytest.mark.timeout(3600)  # a cold build installs torch and vLLM (minutes)

COMPOSE = DEPLOY / "docker-compose.yml"
REPLICAS = ("glore-1", "glore-2")
SERVICES = (*REPLICAS, "nginx", "prometheus")
ROLES = ("policy", "orm", "sorm", "refine_global", "refine_local")


@pytest.fixture(scope="module")
def stack(
    glore_image: str,
    mountable_run: Path,
    build_log: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    # The compose file names the replicas' image glore:cpu; it is the image built above.
    with running_stack(
        COMPOSE,
        run_dir=mountable_run,
        images={"glore:cpu": glore_image},
        services=SERVICES,
        build_log=build_log,
        workdir=tmp_path_factory.mktemp("compose"),
    ) as s:
        for replica in REPLICAS:
            wait_until(
                lambda r=replica: s.healthy(r), timeout=300, interval=2, what=f"{replica} healthy"
            )
        wait_until(
            lambda: httpx.get(f"{s.url}/ready", timeout=5).status_code == 200,
            timeout=60,
            what="/ready through nginx",
        )
        yield s


def _solve(url: str, *, max_new_tokens: int = 32, **extra: object) -> httpx.Response:
    question = tiny_problems(1, seed=5)[0].question
    body = {"question": question, "max_new_tokens": max_new_tokens, **extra}
    return httpx.post(f"{url}/solve", json=body, timeout=180)


def test_prometheus_scrapes_both_replicas_and_every_role_is_ready(stack: Stack) -> None:
    def query(expr: str) -> list[dict[str, object]]:
        r = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        return list(r.json()["data"]["result"])

    def both_up() -> bool:
        r = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()
        glore = [t for t in r["data"]["activeTargets"] if t["labels"]["job"] == "glore"]
        return sorted(t["labels"]["instance"] for t in glore if t["health"] == "up") == [
            "glore-1:8000",
            "glore-2:8000",
        ]

    def readiness() -> dict[tuple[str, str], str]:
        ready = query("glore_engine_ready")
        return {(s["metric"]["instance"], s["metric"]["role"]): s["value"][1] for s in ready}  # type: ignore[index]

    expected = {(f"{r}:8000", role): "1" for r in REPLICAS for role in ROLES}
    # prometheus.yml scrapes every 15 s, and a first scrape may predate the models loading.
    wait_until(both_up, timeout=90, interval=2, what="both replicas up in Prometheus")
    wait_until(lambda: readiness() == expected, timeout=90, interval=2, what="every role ready")
    assert readiness() == expected


def test_prometheus_is_published_on_loopback_only_and_has_no_lifecycle_api(stack: Stack) -> None:
    ports = podman.podman("port", stack.containers["prometheus"]).stdout.split()
    bindings = [p for p in ports if ":" in p]
    assert bindings and all(p.startswith("127.0.0.1:") for p in bindings), ports
    for action in ("reload", "quit"):
        r = httpx.post(f"{stack.prometheus}/-/{action}", timeout=10)
        assert r.status_code == 403, (action, r.status_code, r.text)
    assert httpx.get(f"{stack.prometheus}/-/ready", timeout=10).status_code == 200


def test_a_replica_stopped_under_load_fails_no_request(stack: Stack) -> None:
    done = threading.Event()
    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=stack.url, timeout=180) as http:
            question = tiny_problems(1, seed=5)[0].question
            while not done.is_set():
                r = http.post("/solve", json={"question": question, "max_new_tokens": 32})
                with lock:
                    results.append((time.monotonic(), r.status_code, r.text[:300]))

    def count() -> int:
        with lock:
            return len(results)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        try:
            wait_until(lambda: count() >= 8, timeout=180, what="8 solves before the stop")
            stopped_at = time.monotonic()
            stop = podman.podman(
                "stop", "--time", "60", stack.containers["glore-1"], check=False, timeout=120
            )
            after = count()
            wait_until(lambda: count() >= after + 8, timeout=180, what="8 solves after the stop")
        finally:
            done.set()
            for c in clients:
                c.result(timeout=240)
    assert stop.returncode == 0, stop.stderr
    failed = [r for r in results if r[1] != 200]
    assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:5]}"
    assert sum(1 for t, _, _ in results if t > stopped_at) >= 8
    # Bring the replica back for the tests after this one.
    podman.podman("start", stack.containers["glore-1"])
    wait_until(lambda: stack.healthy("glore-1"), timeout=300, interval=2, what="glore-1 healthy")


def test_down_with_requests_in_flight_loses_none_of_them(stack: Stack) -> None:
    # Eight at once, four per replica, each a best-of-16 sampled hot (sixteen long
    # generations): the replicas work through them for seconds, so they are in flight when
    # `down` begins. Greedy-length answers are not enough: a default that answers in a few
    # tokens finished all eight within the second below.
    n = 8
    body = {"strategy": "best_of_n", "n": 16, "seed": 1, "temperature": 1.5}
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        pending = [pool.submit(_timed_solve, stack.url, **body) for _ in range(n)]
        time.sleep(1.0)  # let nginx hand every one of them to a replica
        down_at = time.monotonic()
        down = stack.compose("down", timeout=600)
        results = [p.result(timeout=240) for p in pending]
    assert down.returncode == 0, stack.log.read_text()[-4000:]
    assert [r.status_code for _, r in results] == [200] * n, [r.text[:300] for _, r in results]
    assert any(ended > down_at for ended, _ in results), "all done before `down`: proves nothing"


def _timed_solve(url: str, **extra: object) -> tuple[float, httpx.Response]:
    response = _solve(url, max_new_tokens=256, **extra)
    return time.monotonic(), response


def test_compose_refuses_to_start_without_a_grafana_admin_password(tmp_path: Path) -> None:
    podman.require_podman()
    env = {k: v for k, v in podman.env().items() if k != "GRAFANA_ADMIN_PASSWORD"}
    project = f"glore-test-{uuid.uuid4().hex[:8]}"
    cmd = [*podman.compose_command(), "-p", project, "-f", str(COMPOSE), "up", "-d", "--no-build"]
    for password in (None, ""):
        run_env = env if password is None else {**env, "GRAFANA_ADMIN_PASSWORD": password}
        proc = subprocess.run(
            [*cmd, "grafana"], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode != 0
        assert "GRAFANA_ADMIN_PASSWORD" in proc.stderr + proc.stdout
    listed = podman.podman(
        "ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "json"
    )
    assert json.loads(listed.stdout or "[]") == [], "it created containers before refusing"
