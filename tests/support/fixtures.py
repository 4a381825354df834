"""Suite-wide pytest fixtures: tiny trained checkpoints and a smoke-trained run, built once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tiny_models import TinyCheckpoints, build_tiny_checkpoints

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_checkpoints() -> TinyCheckpoints:
    """A tiny trained policy and scorer (built once, cached on disk) and a run dir using them.

    `.policy` (LlamaForCausalLM), `.scorer` (LlamaForTokenClassification, 2 labels) and `.run_dir`
    (policy/, orm/, sorm/, refine_global/, refine_local/, manifest.json).
    """
    return build_tiny_checkpoints()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained by `glore train all --preset smoke` (once per test session)."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "glore.cli", "train", "all", "--preset", "smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def standin_base_model() -> Path:
    """A small pretrained-style Llama directory with its own GSM8K-trained BPE tokenizer and no
    step tag (training.standin), built once and cached: the real-model recipe's base."""
    from tests.support.standin_model import GSM8K_DIR, build_standin_model

    assert GSM8K_DIR.is_dir(), f"GSM8K data is missing at {GSM8K_DIR}"
    return build_standin_model()
