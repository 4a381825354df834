"""Fixtures of the container tests: the images (built once per machine, then reused) and a run
directory that can be mounted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.deploy import podman
from tests.support.tiny_models import TinyCheckpoints


@pytest.fixture(scope="session")
def build_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("podman") / "build.log"


@pytest.fixture(scope="session")
def glore_image(build_log: Path) -> str:
    """The project's Dockerfile, cpu target, built on the Debian base (or reused)."""
    podman.require_podman()
    built = podman.build("cpu", log=build_log)
    print(f"glore image {built.tag}: {built.seconds:.0f}s (reused: {built.cached})")
    return built.tag


@pytest.fixture(scope="session")
def mountable_run(
    tiny_checkpoints: TinyCheckpoints, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny run with its role folders as real copies: the cached fixture links them to
    shared checkpoints (`../policy`), and a relative link leaving the run breaks at /models."""
    run = tmp_path_factory.mktemp("mountable") / "run"
    shutil.copytree(tiny_checkpoints.run_dir, run)  # follows symlinks: real files
    for path in [run, *run.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's uid 10001
    return run
