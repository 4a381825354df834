"""What "the same as the in-process HF engine" means, for every backend checked against it: the
prompts read, and the agreement asserted on greedy text, step scores and log-probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from engines.base import Completion, StepScores, TokenLogprobs
from engines.text import global_refine_prompt, join_steps, local_refine_prompt, policy_prompt
from training.tasks import Problem

TOLERANCE = 1e-4


def parity_prompts(problems: Sequence[Problem]) -> list[str]:
    """Policy prompts, and the refiners' (longer inputs, other templates) for the first four."""
    prompts = [policy_prompt(p.question) for p in problems]
    for p in problems[:4]:
        draft = join_steps(p.steps)
        prompts.append(global_refine_prompt(p.question, draft))
        prompts.append(local_refine_prompt(p.question, draft, len(p.steps) - 1).prompt)
    return prompts


def assert_same_greedy(
    expected: Sequence[Sequence[Completion]], got: Sequence[Sequence[Completion]]
) -> None:
    """The same first completion per prompt: text, finish reason and token count."""
    assert [c[0].text for c in got] == [c[0].text for c in expected]
    assert [c[0].finish_reason for c in got] == [c[0].finish_reason for c in expected]
    assert [c[0].num_tokens for c in got] == [c[0].num_tokens for c in expected]


def assert_scores_agree(expected: Sequence[StepScores], got: Sequence[StepScores]) -> None:
    """Every step's probability, and the outcome's, within TOLERANCE."""
    for a, b in zip(expected, got, strict=True):
        assert len(b.step_probs) == len(a.step_probs)
        assert b.step_probs == pytest.approx(a.step_probs, abs=TOLERANCE)
        assert abs(a.outcome_prob - b.outcome_prob) <= TOLERANCE


def assert_logprobs_agree(expected: Sequence[TokenLogprobs], got: Sequence[TokenLogprobs]) -> None:
    """Every token's log-probability within TOLERANCE, over more than one token."""
    for a, b in zip(expected, got, strict=True):
        assert len(b.logprobs) == len(a.logprobs) > 1
        assert b.logprobs == pytest.approx(a.logprobs, abs=TOLERANCE)
