"""A live glore whose five roles are all remote, on real vLLM servers these tests start: it loads
no weights and no torch, /ready names a dead model server's roles, a server killed under load
fails only the requests that need it (a 503 naming the role, within the time limit), and a
restarted server is served again without restarting glore."""

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

from bench.model_servers import ModelServer, model_server
from engines.base import Role
from tests.support.server import ServerHandle, start_server
from tests.support.tiny_models import TinyCheckpoints

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TIMEOUT_S = 20.0
GENERATORS = (Role.POLICY, Role.REFINE_GLOBAL, Role.REFINE_LOCAL)
SCORERS = (Role.ORM, Role.SORM)
QUESTION = "Mia has 3 apples and buys 4 more. How many apples does she have?"


@pytest.fixture(scope="module")
def model_servers(tiny_checkpoints: TinyCheckpoints) -> Iterator[tuple[ModelServer, ModelServer]]:
    """The policy's completions server and the reward models' pooling server, started side by
    side (each takes a while on a small CPU) and stopped at the end, whatever happened."""
    policy = model_server(tiny_checkpoints.run_dir / "policy", served_name="policy")
    scorer = model_server(tiny_checkpoints.run_dir / "orm", served_name="scorer", runner="pooling")
    try:
        policy.start(wait=False)
        scorer.start(wait=False)
        policy.wait_ready()
        scorer.wait_ready()
        yield policy, scorer
    finally:
        policy.stop()
        scorer.stop()


@pytest.fixture(scope="module")
def policy_server(model_servers: tuple[ModelServer, ModelServer]) -> ModelServer:
    return model_servers[0]


@pytest.fixture(scope="module")
def scorer_server(model_servers: tuple[ModelServer, ModelServer]) -> ModelServer:
    return model_servers[1]


def remote_env(policy: ModelServer, scorer: ModelServer) -> dict[str, str]:
    """Every role remote: the generators on the policy server (the tiny run's refiners are the
    policy's weights), the ORM and SORM on one pooling server."""
    env = {
        "OMP_NUM_THREADS": "1",
        "GLORE_LOG_LEVEL": "WARNING",
        "GLORE_LIMITS__REQUEST_TIMEOUT_S": str(TIMEOUT_S),
    }
    fast = {"retries": 2, "retry_backoff_s": 0.2, "health_interval_s": 0.5}
    for role in GENERATORS:
        env[f"GLORE_{role.value.upper()}__BACKEND"] = "remote"
        env[f"GLORE_{role.value.upper()}__OPTIONS"] = json.dumps(
            {"base_url": policy.url, "model": "policy", **fast}
        )
    for role in SCORERS:
        env[f"GLORE_{role.value.upper()}__BACKEND"] = "remote"
        env[f"GLORE_{role.value.upper()}__OPTIONS"] = json.dumps({"base_url": scorer.url, **fast})
    return env


@pytest.fixture(scope="module")
def glore(
    tiny_checkpoints: TinyCheckpoints, policy_server: ModelServer, scorer_server: ModelServer
) -> Iterator[ServerHandle]:
    env = remote_env(policy_server, scorer_server)
    with start_server(tiny_checkpoints.run_dir, env=env, timeout=60) as handle:
        yield handle


def solve(url: str, strategy: str) -> tuple[str, int, float, dict[str, Any]]:
    start = time.monotonic()
    with httpx.Client(timeout=TIMEOUT_S * 3) as client:
        r = client.post(f"{url}/solve", json={"question": QUESTION, "strategy": strategy})
    return strategy, r.status_code, time.monotonic() - start, r.json()


def metric_total(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_an_all_remote_replica_holds_no_weights_and_no_torch(glore: ServerHandle) -> None:
    ready = httpx.get(f"{glore.url}/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert all(r["healthy"] for r in ready.json()["roles"].values())
    maps = Path(f"/proc/{glore.process.pid}/maps").read_text()
    assert "libtorch" not in maps and "safetensors" not in maps
    assert solve(glore.url, "glore")[1] == 200


def test_a_scorer_server_killed_under_load_fails_only_what_needs_it_then_recovers(
    glore: ServerHandle, scorer_server: ModelServer
) -> None:
    results: list[tuple[str, int, float, dict[str, Any]]] = []
    stop = threading.Event()

    def worker(strategy: str) -> None:
        while not stop.is_set():
            results.append(solve(glore.url, strategy))

    strategies = ["glore", "greedy", "self_consistency", "glore"]
    with cf.ThreadPoolExecutor(len(strategies)) as pool:
        futures = [pool.submit(worker, s) for s in strategies]
        time.sleep(3)
        served_before = len(results)
        scorer_server.kill()  # SIGKILL: the server and its engine die mid-request
        killed_at = time.monotonic()
        time.sleep(4)
        stop.set()
        for f in futures:
            f.result()
    assert served_before > 0

    by_status: dict[int, int] = {}
    for strategy, status, seconds, body in results:
        by_status[status] = by_status.get(status, 0) + 1
        # nothing hangs past the request's time limit
        assert seconds < TIMEOUT_S + 5, (strategy, status, seconds)
        if strategy == "self_consistency":
            # it calls the policy alone: the dead scorer server costs it nothing
            assert status == 200, body
        else:
            assert status in (200, 503), body
        if status == 503:
            message = body["error"]["message"]
            assert "orm" in message or "sorm" in message, message
            assert "policy" not in message, message
    assert by_status.get(503, 0) > 0, by_status  # the kill did fail what needed the scorers

    ready = httpx.get(f"{glore.url}/ready", timeout=10)
    assert ready.status_code == 503
    named = {d["loc"][-1] for d in ready.json()["error"]["details"]}
    assert named == {"orm", "sorm"}
    errors = sum(
        metric_total(glore.url, "glore_upstream_errors_total", role=r.value) for r in SCORERS
    )
    assert errors > 0  # the calls the kill cut off, counted by role
    assert time.monotonic() - killed_at < 60

    # restart the model server on its port: glore serves again, without a restart of its own
    scorer_server.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{glore.url}/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "glore did not see the scorer server come back"
        time.sleep(0.25)
    assert solve(glore.url, "glore")[1] == 200
    assert glore.alive()
