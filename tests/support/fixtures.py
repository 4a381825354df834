"""Suite-wide pytest fixtures: the briefly trained tiny checkpoints every tier can use."""

from __future__ import annotations

import pytest

from tests.support.tiny_models import TinyCheckpoints, build_tiny_checkpoints


@pytest.fixture(scope="session")
def tiny_checkpoints() -> TinyCheckpoints:
    """A tiny trained policy and scorer (built once, cached on disk) and a run dir using them.

    `.policy` (LlamaForCausalLM), `.scorer` (LlamaForTokenClassification, 2 labels) and `.run_dir`
    (policy/, orm/, sorm/, refine_global/, refine_local/, manifest.json).
    """
    return build_tiny_checkpoints()
