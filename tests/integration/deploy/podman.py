"""Build and run the project's images with podman, as root, for the container tests.

Registries are out of reach from the test machines, so the base is a Debian bookworm made with
debootstrap from the machine's configured mirror (carrying the machine's extra CA certificates),
and pip inside the build reads the machine's own pip configuration (its find-links and file://
indexes mounted read-only), discovered at test time. Images are tagged by a hash of what built
them, so a later run reuses them; `make clean-images` (`python -m tests.integration.deploy.podman
clean`) reclaims the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.integration.deploy.harness import require_binary, tail_of

ROOT = Path(__file__).resolve().parents[3]
CONTAINERS = Path(__file__).resolve().parent / "containers"
CONTAINERS_CONF = CONTAINERS / "containers.conf"
SUITE = "bookworm"
# What the glore image needs from its base beyond minbase: python3 + venv (the python:3.11-slim
# stand-in), libnuma1 (vLLM's CPU kernels), ca-certificates (pip over https).
BASE_PACKAGES = ("python3", "python3-venv", "libnuma1", "ca-certificates")
# Every image the suite makes carries this prefix, so `clean` removes exactly those.
PREFIX = "localhost/glore-test"
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
# Where builds and the lock live between runs (the images themselves are in podman's storage).
STATE = Path(os.environ.get("GLORE_PODMAN_STATE", "/var/tmp/glore-podman"))
# pip settings worth carrying into a build; the rest (caches, verbosity) stay the build's own.
PIP_KEYS = (
    "index-url",
    "extra-index-url",
    "find-links",
    "constraint",
    "cert",
    "trusted-host",
    "default-timeout",
    "no-index",
)


def env() -> dict[str, str]:
    """This process's environment with the suite's podman settings (runtime, ulimits)."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def require_podman() -> None:
    """Fail (never skip) when a program the container tests drive is missing."""
    # netavark sets up container networks with iptables (Debian does not pull it in).
    for name in ("podman", "runc", "catatonit", "debootstrap", "iptables"):
        require_binary(name)
    # podman's network helpers live outside PATH; container DNS (replica names) needs both.
    for helper in ("netavark", "aardvark-dns"):
        if not any(Path(d, helper).exists() for d in ("/usr/lib/podman", "/usr/libexec/podman")):
            pytest.fail(
                f"podman's `{helper}` is not installed: it is required for this test "
                f"(Debian: `apt-get install -y {helper}`; `make test` does that when run as root)",
                pytrace=False,
            )
    if not compose_command():
        pytest.fail(
            "`podman-compose` is not installed: it is required for the stack test "
            "(pip install podman-compose==1.6.0; the dev extra pins it)",
            pytrace=False,
        )


def compose_command() -> list[str]:
    """podman-compose from this interpreter's environment (the dev extra's pin), else PATH."""
    here = Path(sys.executable).parent / "podman-compose"
    if here.exists():
        return [str(here)]
    found = shutil.which("podman-compose")
    return [found] if found else []


def podman(
    *args: str, timeout: float = 120, check: bool = True, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; a failure fails the test with podman's own words."""
    cmd = ["podman", *args]
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.run(
                cmd, env=env(), stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout
            )
        proc.stdout = ""
    else:
        proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        detail = tail_of(log) if log is not None else (proc.stderr or proc.stdout)[-4000:]
        pytest.fail(f"`{' '.join(cmd[:4])} ...` exited {proc.returncode}:\n{detail}")
    return proc


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder at a time per machine (other checkouts may run the suite too)."""
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def debian_mirror() -> str:
    """The Debian mirror apt is configured with here (deb822 or one-line format)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for uri in re.findall(r"^URIs:\s*(\S+)", text, flags=re.MULTILINE) + re.findall(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, flags=re.MULTILINE
        ):
            if "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def extra_ca_certificates() -> list[Path]:
    """Local CA certificates (a proxy's, a company's) that pip inside a build must trust."""
    if not EXTRA_CA_DIR.is_dir():
        return []
    return sorted(p for p in EXTRA_CA_DIR.rglob("*.crt") if p.is_file())


def base_image(log: Path) -> str:
    """A Debian bookworm image with Python, made by debootstrap and `podman import` (once)."""
    mirror = debian_mirror()
    certs = extra_ca_certificates()
    key = _digest(SUITE, mirror, *BASE_PACKAGES, *(c.read_bytes() for c in certs))
    tag = f"{PREFIX}-base:{SUITE}-{key}"
    with locked("base"):
        if image_exists(tag):
            return tag
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=STATE, prefix="rootfs-") as scratch:
            rootfs = Path(scratch) / "rootfs"
            run_logged(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                log,
                timeout=900,
            )
            for cert in certs:
                dest = rootfs / cert.relative_to("/").as_posix()
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(cert, dest)
            run_logged(["chroot", str(rootfs), "update-ca-certificates"], log, timeout=120)
            run_logged(["chroot", str(rootfs), "apt-get", "clean"], log, timeout=60)
            for cache in ("var/lib/apt/lists", "var/cache/apt"):
                shutil.rmtree(rootfs / cache, ignore_errors=True)
                (rootfs / cache).mkdir(parents=True)
            archive = Path(scratch) / "rootfs.tar"
            run_logged(["tar", "-C", str(rootfs), "-cf", str(archive), "."], log, timeout=300)
            podman(
                "import",
                "--change",
                'CMD ["/bin/bash"]',
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                str(archive),
                tag,
                timeout=300,
                log=log,
            )
        with log.open("a") as out:
            out.write(f"base image {tag} built in {time.monotonic() - started:.0f}s\n")
    return tag


def run_logged(cmd: Sequence[str], log: Path, *, timeout: float) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env()
        )
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd[:3])} ...` exited {proc.returncode}:\n{tail_of(log)}")


@dataclass
class PipSettings:
    """This machine's pip configuration, as a pip.conf and the paths it needs mounted."""

    values: dict[str, str] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)

    @property
    def index_url(self) -> str:
        return self.values.get("index-url", "https://pypi.org/simple").split()[0]

    def pip_conf(self) -> str:
        lines = ["[global]"] + [f"{k} = {v}" for k, v in sorted(self.values.items())]
        return "\n".join(lines) + "\n"


def pip_settings() -> PipSettings:
    """What `pip config list` reports for this interpreter (environment over files)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    files: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^(\S+?)\.([\w-]+)='(.*)'$", line.strip())
        if not match or match.group(2) not in PIP_KEYS:
            continue
        scope, key, value = match.groups()
        if scope == ":env:":
            from_env[key] = value
        elif scope in ("global", "install"):
            files[key] = value
    values = {**files, **from_env}
    mounts: list[Path] = []
    for key in ("find-links", "index-url", "extra-index-url", "constraint", "cert"):
        for item in values.get(key, "").split():
            path = Path(urlparse(item).path) if item.startswith("file:") else Path(item)
            if key.endswith("index-url") and path.name == "simple":
                path = path.parent  # a PEP 503 tree links its files beside simple/ (../files/)
            if path.is_absolute() and path.exists() and path not in mounts:
                mounts.append(path)
    return PipSettings(values, mounts)


def context_files() -> list[Path]:
    """The files that decide the glore image: the Dockerfile and what .dockerignore lets in."""
    # Not README.md: the cpu target copies none (the gpu target, not built here, does).
    copied = ("pyproject.toml", "glore", "engines", "service", "routers", "training", "bench")
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore"]
    for name in copied:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            )
    return files


@dataclass(frozen=True)
class Built:
    tag: str
    seconds: float
    cached: bool


def build(
    target: str, *, log: Path, containerfile: Path | None = None, context: Path | None = None
) -> Built:
    """Build TARGET of the project's Dockerfile (or a one-stage test Containerfile, TARGET then
    only naming its tag) on the Debian base.

    The tag carries a hash of every input, so an unchanged tree reuses the image outright; a
    changed one rebuilds on podman's layer cache (dependencies reinstall only when
    pyproject.toml changes).
    """
    started = time.monotonic()
    base = base_image(log)
    pip = pip_settings()
    dockerfile = containerfile or ROOT / "Dockerfile"
    inputs = context_files() if containerfile is None else [dockerfile]
    key = _digest(
        base, target, *(str(p.relative_to(ROOT)) for p in inputs), *(p.read_bytes() for p in inputs)
    )
    name = "glore" if containerfile is None else dockerfile.stem.lower()
    tag = f"{PREFIX}-{name}:{target}-{key}"
    with locked("build"):
        if image_exists(tag):
            return Built(tag, time.monotonic() - started, cached=True)
        with tempfile.TemporaryDirectory(dir=STATE, prefix="pip-") as scratch:
            conf = Path(scratch) / "pip.conf"
            conf.write_text(pip.pip_conf())
            conf.chmod(0o644)
            volumes = [f"{conf}:/etc/pip.conf:ro"] + [f"{p}:{p}:ro" for p in pip.mounts]
            podman(
                "build",
                "--format",
                "docker",
                "--network",
                "host",
                "--layers",
                *(["--target", target] if containerfile is None else []),
                "--build-arg",
                f"BASE_IMAGE={base}",
                "--build-arg",
                f"TORCH_INDEX_URL={pip.index_url}",
                *(arg for v in volumes for arg in ("--volume", v)),
                "--tag",
                tag,
                "--file",
                str(dockerfile),
                str(context or ROOT),
                timeout=3000,
                log=log,
            )
        _untag_older(tag)
    return Built(tag, time.monotonic() - started, cached=False)


def _untag_older(tag: str) -> None:
    """Drop the tags of earlier builds of the same image (GBs each, and never used again once
    the tree has moved on); podman keeps any still used by a container."""
    repo, _, version = tag.rpartition(":")
    prefix = version.rsplit("-", 1)[0] + "-"
    listed = podman(
        "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={repo}"
    )
    older = [t for t in listed.stdout.split() if t.startswith(f"{repo}:{prefix}") and t != tag]
    if older:
        podman("rmi", *older, check=False, timeout=900)


def clean() -> None:
    """Remove every image the suite made, then the build cache layers they leave dangling."""
    listed = subprocess.run(
        ["podman", "images", "--format", "json"], env=env(), capture_output=True, text=True
    )
    images = json.loads(listed.stdout or "[]") if listed.returncode == 0 else []
    ours = sorted(
        {img["Id"] for img in images if any(n.startswith(PREFIX) for n in img.get("Names") or [])}
    )
    if ours:
        subprocess.run(["podman", "rmi", "--force", *ours], env=env(), check=False)
    subprocess.run(["podman", "image", "prune", "--force"], env=env(), check=False)
    shutil.rmtree(STATE, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["clean"]:
        clean()
    elif sys.argv[1:2] == ["build"]:
        out = Path(tempfile.mkdtemp(prefix="glore-build-")) / "build.log"
        built = build(sys.argv[2] if len(sys.argv) > 2 else "cpu", log=out)
        print(f"{built.tag} in {built.seconds:.0f}s (cached: {built.cached}); log {out}")
    else:
        sys.exit("usage: python -m tests.integration.deploy.podman clean | build [TARGET]")
