"""HF and vLLM on the same float32 checkpoints: same greedy text, same step scores."""

from __future__ import annotations

import random

import pytest

from engines.base import Generator, LikelihoodRequest, SamplingParams, Scorer, ScoreRequest
from engines.text import join_steps, policy_prompt
from tests.support.parity import (
    assert_logprobs_agree,
    assert_same_greedy,
    assert_scores_agree,
    parity_prompts,
)
from tests.support.tiny_models import corrupt, tiny_problems

pytestmark = pytest.mark.vllm

PROBLEMS = tiny_problems(24, seed=202)


async def test_greedy_generations_are_identical_text(
    hf_generator: Generator, vllm_generator: Generator
) -> None:
    prompts = parity_prompts(PROBLEMS)
    params = SamplingParams(max_new_tokens=128)
    hf = await hf_generator.generate(prompts, params)
    assert_same_greedy(hf, await vllm_generator.generate(prompts, params))


async def test_step_and_outcome_scores_agree_within_1e_4(
    hf_scorer: Scorer, vllm_scorer: Scorer
) -> None:
    rng = random.Random(3)
    requests = [ScoreRequest(p.question, p.steps) for p in PROBLEMS]
    requests += [ScoreRequest(p.question, corrupt(p, rng)[0]) for p in PROBLEMS]
    assert_scores_agree(await hf_scorer.score(requests), await vllm_scorer.score(requests))


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
    assert_logprobs_agree(hf, await vllm_generator.logprobs(requests))
