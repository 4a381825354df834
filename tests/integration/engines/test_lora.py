"""LoRA adapters: roles fine-tuned as adapters of one base share one vLLM engine; HF merges them."""

from __future__ import annotations

import pytest

from engines.base import Backend, EngineSpec, Role, SamplingParams
from engines.hf import HFGenerator
from engines.registry import load_engines
from engines.text import policy_prompt
from tests.integration.engines.conftest import VLLM_OPTIONS
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

PROMPTS = [policy_prompt(p.question) for p in tiny_problems(4, seed=404)]
GREEDY = SamplingParams(max_new_tokens=48)


@pytest.fixture(scope="module")
def adapters(tiny_checkpoints: TinyCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two rank-8 adapters of the tiny policy: one that changes nothing, one that changes a lot."""
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


async def test_hf_merges_the_chosen_adapter(
    tiny_checkpoints: TinyCheckpoints, adapters: dict
) -> None:
    base = HFGenerator(tiny_checkpoints.policy, device="cpu")
    noop = HFGenerator(
        tiny_checkpoints.policy, device="cpu", lora_adapters=adapters, adapter="noop"
    )
    loud = HFGenerator(
        tiny_checkpoints.policy, device="cpu", lora_adapters=adapters, adapter="loud"
    )
    try:
        expected = await base.generate(PROMPTS, GREEDY)
        assert await noop.generate(PROMPTS, GREEDY) == expected
        assert await loud.generate(PROMPTS, GREEDY) != expected
    finally:
        for e in (base, noop, loud):
            await e.close()


@pytest.mark.vllm
async def test_vllm_roles_with_different_adapters_share_one_engine(
    tiny_checkpoints: TinyCheckpoints, adapters: dict, hf_generator: HFGenerator
) -> None:
    path = str(tiny_checkpoints.policy)
    common = {**VLLM_OPTIONS, "lora_adapters": adapters, "max_lora_rank": 8}
    specs = {
        Role.POLICY: EngineSpec(path, Backend.VLLM, dict(common)),
        Role.REFINE_GLOBAL: EngineSpec(path, Backend.VLLM, {**common, "adapter": "noop"}),
        Role.REFINE_LOCAL: EngineSpec(path, Backend.VLLM, {**common, "adapter": "loud"}),
    }
    engines = load_engines(specs)
    try:
        views = [engines.policy, engines.refine_global, engines.refine_local]
        assert len({id(v._runtime) for v in views}) == 1  # type: ignore[attr-defined]
        expected = await hf_generator.generate(PROMPTS, GREEDY)
        assert await engines.policy.generate(PROMPTS, GREEDY) == expected
        assert await engines.refine_global.generate(PROMPTS, GREEDY) == expected
        assert await engines.refine_local.generate(PROMPTS, GREEDY) != expected
    finally:
        await engines.close()
    assert not any(h.healthy for h in engines.health().values())


def test_an_unknown_adapter_is_refused_naming_it(
    tiny_checkpoints: TinyCheckpoints, adapters: dict
) -> None:
    from engines.base import EngineLoadError

    with pytest.raises(EngineLoadError, match="quiet"):
        HFGenerator(tiny_checkpoints.policy, device="cpu", lora_adapters=adapters, adapter="quiet")
