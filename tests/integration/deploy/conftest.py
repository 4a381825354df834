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


def _image(target: str, build_log: Path) -> str:
    podman.require_podman()
    built = podman.build(target, log=build_log)
    print(f"{target} image {built.tag}: {built.seconds:.0f}s (reused: {built.cached})")
    return built.tag


@pytest.fixture(scope="session")
def glore_image(build_log: Path) -> str:
    """The project's Dockerfile, cpu target, built on the Debian base (or reused)."""
    return _image("cpu", build_log)


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


@pytest.fixture(scope="session")
def orchestrator_image(build_log: Path) -> str:
    """The Dockerfile's orchestrator target (no torch, no vLLM), built on the Debian base."""
    return _image("orchestrator", build_log)


@pytest.fixture(scope="session")
def adapter_run(mountable_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run as an adapter run: its refiners LoRA adapters of its policy, made and saved
    as the refiners stage makes them with `refiners.adapters: true` (training.modeling's
    with_lora over every linear layer, save_adapter with base ../policy). refine_global's
    adapter is nudged off the policy, so it decodes differently; refine_local's is a no-op."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.config import ModelConfig
    from training.modeling import save_adapter, with_lora

    run = tmp_path_factory.mktemp("adapter-run") / "run"
    shutil.copytree(mountable_run, run)
    policy = run / "policy"
    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    for role, scale in (("refine_global", 0.05), ("refine_local", 0.0)):
        model = with_lora(
            AutoModelForCausalLM.from_pretrained(str(policy)),
            ModelConfig(lora=True),
            classifier=False,
        )
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
        shutil.rmtree(run / role)
        save_adapter(model, tokenizer, run / role, base="../policy")
    for path in [run, *run.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return run
