"""A compose stack of deploy/ brought up by podman-compose for a test: its project, environment,
entry points and containers; shared by the in-process stack test and the scaled-out one.

The only override (containers/compose.test.yml) swaps the nginx and Prometheus images for Debian
ones built here, since registries are out of reach; Grafana (no Debian package) is not started.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.deploy import podman
from tests.integration.deploy.harness import ROOT, free_port

OVERRIDE = podman.CONTAINERS / "compose.test.yml"


@dataclass
class Stack:
    compose_file: Path
    project: str
    env: dict[str, str]
    url: str  # nginx, the public entry point
    prometheus: str
    log: Path
    containers: dict[str, str] = field(default_factory=dict)  # service -> container name

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = [*podman.compose_command(), "-p", self.project, "-f", str(self.compose_file)]
        cmd += ["-f", str(OVERRIDE), *args]
        with self.log.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            return subprocess.run(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True,
                timeout=timeout,
            )  # fmt: skip

    def find_containers(self) -> None:
        listed = podman.podman(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
            "--format", "json",
        )  # fmt: skip
        for c in json.loads(listed.stdout or "[]"):
            service = (c.get("Labels") or {}).get("com.docker.compose.service")
            if service:
                self.containers[service] = c["Names"][0]

    def healthy(self, service: str) -> bool:
        """The service's HEALTHCHECK, run now (podman 4.3 has no timer running it here)."""
        name = self.containers[service]
        return podman.podman("healthcheck", "run", name, check=False, timeout=60).returncode == 0

    def logs(self, service: str) -> str:
        out = podman.podman("logs", self.containers[service], check=False)
        return (out.stdout + out.stderr)[-6000:]

    def started_at(self, service: str) -> str:
        """When the service's container last started: unchanged means it was not restarted."""
        out = podman.podman("inspect", "--format", "{{.State.StartedAt}}", self.containers[service])
        return out.stdout.strip()


def debian_image(name: str, log: Path) -> str:
    """A stand-in for an upstream image: containers/NAME.Containerfile on the Debian base."""
    containerfile = podman.CONTAINERS / f"{name}.Containerfile"
    return podman.build(
        "debian", log=log, containerfile=containerfile, context=podman.CONTAINERS
    ).tag


@contextlib.contextmanager
def running_stack(
    compose_file: Path,
    *,
    run_dir: Path,
    images: Mapping[str, str],
    services: Sequence[str],
    build_log: Path,
    workdir: Path,
) -> Iterator[Stack]:
    """`compose up -d` of `services` serving `run_dir`, the project's images tagged with the
    names the compose file uses (`images`: name -> built tag), on free loopback ports; each
    service's log tail is kept in `workdir` and the stack is taken down at the end."""
    nginx, prom = debian_image("Nginx", build_log), debian_image("Prometheus", build_log)
    for name, tag in images.items():
        podman.podman("tag", tag, f"localhost/{name}")
    http_port, prom_port = free_port(), free_port()
    env = {
        **podman.env(),
        "GLORE_RUN_DIR": str(run_dir),
        "GLORE_HTTP_PORT": str(http_port),
        "PROMETHEUS_PORT": str(prom_port),
        # Required by the compose files (Grafana has no default password); Grafana not started.
        "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,
        "GLORE_TEST_NGINX_IMAGE": nginx,
        "GLORE_TEST_PROMETHEUS_IMAGE": prom,
    }
    s = Stack(
        compose_file=compose_file,
        project=f"glore-test-{uuid.uuid4().hex[:8]}",
        env=env,
        url=f"http://127.0.0.1:{http_port}",
        prometheus=f"http://127.0.0.1:{prom_port}",
        log=workdir / "compose.log",
    )
    try:
        up = s.compose("up", "-d", "--no-build", *services)
        assert up.returncode == 0, s.log.read_text()[-4000:]
        s.find_containers()
        assert set(s.containers) == set(services), (s.containers, s.log.read_text()[-4000:])
        yield s
    finally:
        for service in s.containers:
            (workdir / f"{service}.log").write_text(s.logs(service))
        s.compose("down", "--volumes", "--timeout", "10", timeout=600)
