"""Suite-wide test set-up: tier markers come from the folder a test lives in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Suite-wide fixtures (tiny trained checkpoints, ...), shared by every tier.
pytest_plugins = ["tests.support.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Multi-threaded torch ops on tiny tensors cost a flat ~8 ms each on this CPU (softmax on a
# 1x2x60x32 tensor: 8 ms with 2 threads, 0.006 ms with 1), so tests run torch on one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in _TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
