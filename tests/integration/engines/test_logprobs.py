"""Reading a completion's token log-probabilities: what a likelihood-based reranker sees."""

from __future__ import annotations

import math

import pytest

from engines.base import Generator, LikelihoodRequest
from engines.text import join_steps, policy_prompt
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

PROBLEMS = tiny_problems(6, seed=404)


async def test_logprobs_match_the_models_own_loss(
    hf_generator: Generator, tiny_checkpoints: TinyCheckpoints
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoints.policy)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints.policy).eval()
    p = PROBLEMS[0]
    prompt, completion = policy_prompt(p.question), join_steps(p.steps)
    [read] = await hf_generator.logprobs([LikelihoodRequest(prompt, completion)])
    ids_p = tok.encode(prompt, add_special_tokens=False)
    ids_c = [*tok.encode(completion, add_special_tokens=False), tok.eos_token_id]
    ids = torch.tensor([ids_p + ids_c])
    labels = torch.tensor([[-100] * len(ids_p) + ids_c])
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=labels).loss  # mean NLL over the completion
    assert len(read.logprobs) == len(ids_c)
    assert read.mean == pytest.approx(-float(loss), abs=1e-4)
    assert read.min == min(read.logprobs)
    assert not math.isnan(read.mean)


async def test_an_empty_request_list_reads_nothing(generator: Generator) -> None:
    assert await generator.logprobs([]) == []


async def test_an_overlong_completion_is_refused_by_name(generator: Generator) -> None:
    with pytest.raises(ValueError, match="completion"):
        await generator.logprobs(
            [LikelihoodRequest(policy_prompt("q"), " ".join(["1 + 1 = 2"] * 400))]
        )
