"""Drive the real Prometheus and nginx on loopback with the shipped deploy/ configs.

The configs are rendered for a test run (loopback targets, temp paths) by substitutions that must
each match, so a changed config fails loudly here instead of silently testing something else.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "glore.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
LOOPBACK = "127.0.0.1"

# What Grafana would put in place of its macros and variables before sending a query. The rate
# window is the one Grafana derives for a 15s scrape interval (4 x 15s), and it is also long
# enough for the test's 1s scrapes to hold several samples.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}


def require_binary(name: str) -> str:
    """The path of a program the test needs; a missing one FAILS the test (never a skip)."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)),
        None,
    )
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: it is required for this test "
            f"(Debian: `apt-get install -y {name}`; `make test` does that when run as root)",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Any, *, timeout: float, interval: float = 0.2, what: str, log: Path | None = None
) -> Any:
    """Poll `check()` until it is truthy; on timeout, fail naming `what`, with a log tail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    tail = f"\n--- {log} (tail) ---\n{tail_of(log)}" if log else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} ({last_error!r}){tail}")


def tail_of(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"<unreadable: {exc}>"


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time; always reaps."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Prometheus


def render_prometheus_config(
    shipped: Path, targets: Sequence[str], *, scrape_interval: str = "1s"
) -> dict[str, Any]:
    """deploy/prometheus.yml for a test: the glore job as shipped, scraping `targets` on loopback.

    Only the targets and intervals change: the job name, metrics path, scheme and labels are the
    shipped ones, so the dashboard's `job="glore"` selectors are tested as they will run.
    """
    config = yaml.safe_load(shipped.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "glore" in jobs, f"{shipped} has no `glore` scrape job"
    job = dict(jobs["glore"])
    static = job["static_configs"]
    assert len(static) == 1, "expected one static_configs block for the glore job"
    shipped_targets = static[0]["targets"]
    assert len(shipped_targets) == len(targets), (
        f"{shipped} scrapes {len(shipped_targets)} replicas, the test runs {len(targets)}"
    )
    job["static_configs"] = [{**static[0], "targets": list(targets)}]
    job["scrape_interval"] = scrape_interval
    job["scrape_timeout"] = scrape_interval
    rendered: dict[str, Any] = {
        "global": {**config.get("global", {}), "evaluation_interval": scrape_interval},
        "scrape_configs": [job],
    }
    rendered["global"]["scrape_interval"] = scrape_interval
    rendered["global"]["scrape_timeout"] = scrape_interval
    # Alert rules are loaded from the repo, so a broken rule file fails here too.
    rule_files = config.get("rule_files", [])
    if rule_files:
        rendered["rule_files"] = [str(DEPLOY / Path(p).name) for p in rule_files]
    return rendered


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant PromQL query; fail the test on an API error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            pytest.fail(f"Prometheus refused {expr!r}: {r.status_code} {body}", pytrace=False)
        assert body["data"]["resultType"] == "vector", body["data"]["resultType"]
        return list(body["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        r.raise_for_status()
        return list(r.json()["data"]["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/rules", timeout=10)
        r.raise_for_status()
        return list(r.json()["data"]["groups"])


@contextlib.contextmanager
def run_prometheus(config: dict[str, Any], workdir: Path) -> Iterator[Prometheus]:
    """The Debian `prometheus` on a free loopback port with a temp data dir; stopped on exit."""
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    prom = Prometheus(url=f"http://{LOOPBACK}:{port}", proc=proc, log=log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{tail_of(log)}")
            return httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200

        wait_until(ready, timeout=30, what="Prometheus /-/ready", log=log)
        yield prom
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------------------------------
# nginx


def _sub_once(pattern: str, replacement: str, text: str, *, count: int = 1) -> str:
    new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert n == count, f"expected {count} match(es) of {pattern!r} in deploy/nginx.conf, got {n}"
    return new


def render_nginx_config(
    shipped: Path, upstreams: Sequence[str], *, listen_port: int, workdir: Path
) -> str:
    """deploy/nginx.conf for a test: loopback listen and replicas, temp paths, current user.

    Everything else (upstream policy, passive health checks, retries, timeouts, headers,
    locations) is the shipped text, byte for byte.
    """
    text = shipped.read_text()
    servers = upstream_servers(text)
    assert len(servers) == len(upstreams), (
        f"deploy/nginx.conf has upstream servers {servers}, the test runs {len(upstreams)}"
    )
    for shipped_addr, addr in zip(servers, upstreams, strict=True):
        # Each replica is listed twice: as a primary and as a backup (see deploy/nginx.conf).
        text = _sub_once(
            rf"(^\s*server\s+){re.escape(shipped_addr)}\b", rf"\g<1>{addr}", text, count=2
        )
    text = _sub_once(r"^(\s*)listen\s+80;", rf"\g<1>listen {LOOPBACK}:{listen_port};", text)
    text = _sub_once(r"^pid\s+\S+;", f"pid {workdir}/nginx.pid;", text)
    # Workers run as the current user: as root that must be said (the default is `nobody`,
    # which cannot write the temp dirs); otherwise the directive only draws a warning.
    user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
    text = _sub_once(r"^user\s+\S+;", user, text)
    # Debian's build puts temp files under /var/lib/nginx; a test keeps them in its own dir.
    temp_paths = "".join(
        f"    {kind}_temp_path {workdir}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = _sub_once(r"^http\s*\{\n", "http {\n" + temp_paths, text)
    return text


def upstream_servers(text: str) -> list[str]:
    """The replicas of nginx.conf's upstream, in order, each once (primary and backup lines)."""
    found = re.findall(r"^\s*server\s+([\w.-]+:\d+)\b", text, flags=re.MULTILINE)
    return list(dict.fromkeys(found))


@dataclass
class Nginx:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def nginx_command(binary: str, workdir: Path, conf: Path) -> list[str]:
    # -e: the startup error log, before the config's own `error_log` takes over (nginx >= 1.19.5).
    return [binary, "-e", "stderr", "-p", f"{workdir}/", "-c", str(conf)]


@contextlib.contextmanager
def run_nginx(shipped: Path, upstreams: Sequence[str], workdir: Path) -> Iterator[Nginx]:
    """The Debian `nginx` in the foreground (daemon off) with the shipped config rendered."""
    binary = require_binary("nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(render_nginx_config(shipped, upstreams, listen_port=port, workdir=workdir))
    check = subprocess.run(
        [*nginx_command(binary, workdir, conf), "-t"], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, f"nginx -t rejected the rendered config:\n{check.stderr}"
    log = workdir / "nginx.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*nginx_command(binary, workdir, conf), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    nginx = Nginx(url=f"http://{LOOPBACK}:{port}", proc=proc, log=log)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited with {proc.returncode}:\n{tail_of(log)}")
            return httpx.get(f"{nginx.url}/nginx-health", timeout=2).status_code == 200

        wait_until(up, timeout=20, what="nginx /nginx-health", log=log)
        yield nginx
    finally:
        # SIGQUIT is nginx's graceful stop; SIGTERM (fast stop) follows if it lingers.
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_process(proc)


def nginx_access_log(log: Path) -> list[dict[str, Any]]:
    """The JSON access-log lines nginx wrote (the shipped `glore` log format)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(line))
    return lines


# ---------------------------------------------------------------------------------------------
# The Grafana dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def dashboard_variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable name, PromQL selector, label) for each `label_values(selector, label)` variable."""
    found = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", query)
        assert m, f"variable {var['name']}: only label_values(selector, label) is supported"
        found.append((var["name"], m.group(1), m.group(2)))
    return found


def as_prometheus_query(expr: str, dashboard: dict[str, Any]) -> str:
    """The PromQL Grafana would send: macros replaced, variables set to "All" (`.*`)."""
    for macro, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(macro, value)
    for var in dashboard.get("templating", {}).get("list", []):
        all_value = var.get("allValue") or ".*"
        expr = expr.replace(f"${{{var['name']}}}", all_value).replace(f"${var['name']}", all_value)
    assert "$" not in expr, f"unsubstituted Grafana variable left in {expr!r}"
    return expr
