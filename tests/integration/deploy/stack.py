"""A compose stack of deploy/ brought up by podman-compose for a test: its project, environment,
entry points and containers; shared by the in-process stack test and the scaled-out one.

The only override (containers/compose.test.yml) swaps the nginx and Prometheus images for Debian
ones built here, since registries are out of reach; Grafana (no Debian package) is not started.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.deploy import podman
from tests.integration.deploy.harness import ROOT

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
