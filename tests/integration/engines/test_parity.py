"""HF and vLLM on the same float32 checkpoints: same greedy text, same step scores."""

from __future__ import annotations

import random

import pytest

from engines.base import Generator, LikelihoodRequest, SamplingParams, Scorer, ScoreRequest
from engines.text import global_refine_prompt, join_steps, local_refine_prompt, policy_prompt
from tests.support.tiny_models import corrupt, tiny_problems

pytestmark = pytest.mark.vllm

PROBLEMS = tiny_problems(24, seed=202)


def _prompts() -> list[str]:
    prompts = [policy_prompt(p.question) for p in PROBLEMS]
    # The refiners' prompts too: longer inputs, other templates, same checkpoint.
    for p in PROBLEMS[:4]:
        draft = join_steps(p.steps)
        prompts.append(global_refine_prompt(p.question, draft))
        prompts.append(local_refine_prompt(p.question, draft, len(p.steps) - 1).prompt)
    return prompts


async def test_greedy_generations_are_identical_text(
    hf_generator: Generator, vllm_generator: Generator
) -> None:
    prompts = _prompts()
    params = SamplingParams(max_new_tokens=128)
    hf = await hf_generator.generate(prompts, params)
    vl = await vllm_generator.generate(prompts, params)
    assert [c[0].text for c in hf] == [c[0].text for c in vl]
    assert [c[0].finish_reason for c in hf] == [c[0].finish_reason for c in vl]
    assert [c[0].num_tokens for c in hf] == [c[0].num_tokens for c in vl]


async def test_step_and_outcome_scores_agree_within_1e_4(
    hf_scorer: Scorer, vllm_scorer: Scorer
) -> None:
    rng = random.Random(3)
    requests = [ScoreRequest(p.question, p.steps) for p in PROBLEMS]
    requests += [ScoreRequest(p.question, corrupt(p, rng)[0]) for p in PROBLEMS]
    hf = await hf_scorer.score(requests)
    vl = await vllm_scorer.score(requests)
    for a, b in zip(hf, vl, strict=True):
        assert len(a.step_probs) == len(b.step_probs)
        assert a.step_probs == pytest.approx(b.step_probs, abs=1e-4)
        assert abs(a.outcome_prob - b.outcome_prob) <= 1e-4


async def test_seeded_sampling_gives_the_requested_n_on_both(
    hf_generator: Generator, vllm_generator: Generator
) -> None:
    params = SamplingParams(n=5, temperature=0.8, top_p=0.9, seed=11, max_new_tokens=80)
    prompts = [policy_prompt(p.question) for p in PROBLEMS[:3]]
    for engine in (hf_generator, vllm_generator):
        out = await engine.generate(prompts, params)
        assert [len(c) for c in out] == [5, 5, 5]
        assert all(
            c.finish_reason in ("stop", "length") and c.num_tokens > 0 for cs in out for c in cs
        )
        assert out == await engine.generate(prompts, params)


async def test_token_logprobs_agree_within_1e_4(
    hf_generator: Generator, vllm_generator: Generator
) -> None:
    rng = random.Random(5)
    requests = [LikelihoodRequest(policy_prompt(p.question), join_steps(p.steps)) for p in PROBLEMS]
    requests += [
        LikelihoodRequest(policy_prompt(p.question), join_steps(corrupt(p, rng)[0]))
        for p in PROBLEMS[:8]
    ]
    hf = await hf_generator.logprobs(requests)
    vl = await vllm_generator.logprobs(requests)
    for a, b in zip(hf, vl, strict=True):
        assert len(a.logprobs) == len(b.logprobs) > 1
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
