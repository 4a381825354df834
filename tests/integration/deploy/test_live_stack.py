"""The shipped Prometheus and nginx configs, run by the real programs against live glore replicas.

Two replicas of the real service (tiny trained checkpoints) listen on loopback. Prometheus
scrapes them with deploy/prometheus.yml and must return data for every query of the Grafana
dashboard; nginx fronts them with deploy/nginx.conf and must keep answering when one dies.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.deploy.harness import (
    DASHBOARD,
    DEPLOY,
    as_prometheus_query,
    dashboard_queries,
    dashboard_variable_queries,
    nginx_access_log,
    render_prometheus_config,
    require_binary,
    run_nginx,
    run_prometheus,
    wait_until,
)
from tests.support.server import ServerHandle, start_server
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

# Short generations: the point is the plumbing, not the answers.
MAX_NEW_TOKENS = 48
REPLICA_ENV = {"OMP_NUM_THREADS": "1", "GLORE_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def replicas(tiny_checkpoints: TinyCheckpoints) -> Iterator[list[ServerHandle]]:
    """Two live glore servers on loopback, serving the tiny run directory."""
    # Fail before the slow part when a program is missing.
    require_binary("prometheus")
    require_binary("nginx")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        starting = [
            pool.submit(start_server, tiny_checkpoints.run_dir, env=REPLICA_ENV, timeout=120)
            for _ in range(2)
        ]
        servers = [f.result() for f in starting]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _questions(k: int) -> list[str]:
    return [p.question for p in tiny_problems(k, seed=7)]


def _traffic_wave(url: str, question: str) -> list[httpx.Response]:
    """One of each kind of request the dashboard has a panel for, errors included."""
    solves = [
        {"question": question},  # glore, refine=auto
        {"question": question, "refine": "always"},  # forces refine + global/local candidates
        {"question": question, "strategy": "greedy"},
        {"question": question, "strategy": "best_of_n", "n": 2, "seed": 1},
    ]
    responses = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for body in solves:
            r = client.post("/solve", json={**body, "max_new_tokens": MAX_NEW_TOKENS})
            assert r.status_code == 200, r.text
            responses.append(r)
        bad = client.post("/solve", json={"question": ""})
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"]["code"] == "validation_error"
        responses.append(bad)
    return responses


def _send_waves(urls: list[str], question: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        for f in [pool.submit(_traffic_wave, url, question) for url in urls]:
            f.result()


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def test_prometheus_scrapes_both_replicas_and_every_dashboard_query_returns_data(
    replicas: list[ServerHandle], tmp_path: Path
) -> None:
    urls = [s.url for s in replicas]
    targets = [u.removeprefix("http://") for u in urls]
    config = render_prometheus_config(DEPLOY / "prometheus.yml", targets)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 15, "the dashboard lost panels"
    question = _questions(1)[0]

    with run_prometheus(config, tmp_path / "prometheus") as prom:

        def both_up() -> bool:
            health = {t["labels"]["instance"]: t["health"] for t in prom.targets()}
            return sorted(health) == sorted(targets) and set(health.values()) == {"up"}

        wait_until(both_up, timeout=30, what="both replicas scraped as up", log=prom.log)

        # rate() needs a series to grow between two scrapes inside its window: send a first
        # wave (creates every labelled series), let Prometheus scrape it, then a second wave.
        def solves_seen(expected: int) -> bool:
            result = prom.query('sum(glore_solves_total{job="glore"})')
            return bool(result) and float(result[0]["value"][1]) >= expected

        per_wave = 4 * len(urls)
        _send_waves(urls, question)
        wait_until(lambda: solves_seen(per_wave), timeout=30, what="wave 1 scraped", log=prom.log)
        _send_waves(urls, question)
        wait_until(
            lambda: solves_seen(2 * per_wave), timeout=30, what="wave 2 scraped", log=prom.log
        )

        failures = []
        for title, expr in queries:
            promql = as_prometheus_query(expr, dashboard)
            result = prom.query(promql)
            if not result:
                failures.append(f"{title}: no series for {promql}")
            elif not _finite(result):
                failures.append(f"{title}: only NaN/Inf for {promql}: {result}")
        for name, selector, label in dashboard_variable_queries(dashboard):
            result = prom.query(selector)
            values = {s["metric"].get(label) for s in result} - {None}
            if not values:
                failures.append(f"variable {name}: no `{label}` values from {selector}")
        assert not failures, "\n".join(failures)

        # Both replicas are in the data, and the alert rules load and evaluate without error.
        instances = {s["metric"]["instance"] for s in prom.query("glore_solves_total")}
        assert instances == set(targets)

        def rules_evaluated() -> list[dict[str, Any]]:
            rules = [r for g in prom.rule_groups() for r in g["rules"]]
            done = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
            return rules if rules and done else []

        rules = wait_until(rules_evaluated, timeout=20, what="alert rules evaluated")
        shipped = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
        assert len(rules) == sum(len(g["rules"]) for g in shipped) >= 8
        assert all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules
        ]
        firing = {r["name"] for r in rules if r.get("state") == "firing"}
        assert "GloreReplicaDown" not in firing


def test_nginx_retries_on_the_other_replica_while_one_drains_after_sigterm(
    replicas: list[ServerHandle], tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    """A draining replica answers 503 shutting_down before doing any work: nginx must pass the
    POST on to the other replica (`http_503 non_idempotent`), so a rolling restart drops nothing.
    """
    steady = replicas[0]
    # Its own replica: it stays in the draining state for a while after SIGTERM.
    draining = start_server(
        tiny_checkpoints.run_dir,
        env={**REPLICA_ENV, "GLORE_SHUTDOWN_DELAY_S": "20"},
        timeout=120,
    )
    upstreams = [h.url.removeprefix("http://") for h in (steady, draining)]
    body = {"question": _questions(1)[0], "strategy": "greedy", "max_new_tokens": MAX_NEW_TOKENS}
    try:
        with (
            run_nginx(DEPLOY / "nginx.conf", upstreams, tmp_path / "nginx") as nginx,
            httpx.Client(base_url=nginx.url, timeout=120) as client,
        ):
            for _ in range(2):
                assert client.post("/solve", json=body).status_code == 200
            draining.signal(signal.SIGTERM)
            wait_until(
                lambda: httpx.get(f"{draining.url}/ready", timeout=2).status_code == 503,
                timeout=10,
                what="the draining replica's /ready to turn 503",
            )
            direct = httpx.post(f"{draining.url}/solve", json=body, timeout=30)
            assert direct.status_code == 503, direct.text
            assert direct.json()["error"]["code"] == "shutting_down"
            for i in range(4):
                r = client.post("/solve", json=body, headers={"X-Request-Id": f"drain-{i}"})
                assert r.status_code == 200, f"request {i} during the drain: {r.text}"
            assert draining.alive(), "the replica should still be draining"
    finally:
        draining.stop()
    log = [e for e in nginx_access_log(nginx.log) if e["request_id"].startswith("drain-")]
    assert len(log) == 4 and all(e["status"] == 200 for e in log), log
    assert all(e["upstream"].split(", ")[-1] == upstreams[0] for e in log), log
    assert any(e["upstream_status"] == "503, 200" for e in log), log


def test_nginx_keeps_answering_through_the_surviving_replica_when_one_dies(
    replicas: list[ServerHandle], tmp_path: Path
) -> None:
    survivor, victim = replicas
    upstreams = [s.url.removeprefix("http://") for s in replicas]
    body = {"question": _questions(1)[0], "strategy": "greedy", "max_new_tokens": MAX_NEW_TOKENS}

    with (
        run_nginx(DEPLOY / "nginx.conf", upstreams, tmp_path / "nginx") as nginx,
        httpx.Client(base_url=nginx.url, timeout=120) as client,
    ):
        assert client.get("/ready").status_code == 200
        for i in range(4):
            r = client.post("/solve", json=body, headers={"X-Request-Id": f"before-{i}"})
            assert r.status_code == 200, r.text
            # The client's request id goes through nginx to the service and back.
            assert r.headers["x-request-id"] == f"before-{i}"
        served_before = {e["upstream"] for e in nginx_access_log(nginx.log)}
        assert set(upstreams) <= served_before, f"nginx did not spread load: {served_before}"

        # Kill, not stop: the replica vanishes without draining, as in a crash.
        victim.signal(signal.SIGKILL)
        wait_until(lambda: not victim.alive(), timeout=10, what="replica killed")

        for i in range(6):
            r = client.post("/solve", json=body, headers={"X-Request-Id": f"after-{i}"})
            assert r.status_code == 200, f"request {i} after the kill: {r.status_code} {r.text}"
            solved = r.json()
            assert solved["request_id"] == r.headers["x-request-id"] == f"after-{i}"
            assert solved["strategy"] == "greedy" and solved["winner"] == "draft"
        assert client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code == 404, "the LB must not expose /metrics"

    log = [e for e in nginx_access_log(nginx.log) if e["request_id"].startswith("after-")]
    assert len(log) == 6 and all(e["status"] == 200 for e in log)
    # Each answer came from the survivor; some first tried the dead replica and were retried
    # (the POST retry on a refused connection), and the dead one was then skipped for a while.
    assert all(e["upstream"].split(", ")[-1] == upstreams[0] for e in log), log
    retried = [e for e in log if "," in e["upstream"]]
    assert retried, f"no request was retried away from the dead replica: {log}"
    assert len(retried) < len(log), "the dead replica should be skipped after max_fails"
    assert survivor.alive(), survivor.logs()[-2000:]
