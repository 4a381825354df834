"""Degrade instead of failing after the draft: a candidate whose input does not fit a model's
context is dropped and listed, on fake engines with a context measured in characters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from engines.base import (
    Completion,
    ContextLengthError,
    LikelihoodRequest,
    SamplingParams,
    ScoreRequest,
    StepScores,
    TokenLogprobs,
)
from engines.reranker import POLICY_LIKELIHOOD
from service.pipeline import (
    Action,
    CandidateKind,
    PipelineConfig,
    Reason,
    RefineMode,
    Stage,
    solve,
)
from tests.support.fakes import (
    RIGHT_GLOBAL,
    WRONG_DRAFT,
    FakeGenerator,
    FakeScorer,
    constant,
    keyword_scorer,
    make_engines,
)

Q = "Tom has 2 apples and buys 3 more bags of 4. How many?"
ALWAYS = PipelineConfig(refine=RefineMode.ALWAYS)


@dataclass
class ShortGenerator(FakeGenerator):
    """A generator whose context holds `limit` characters of prompt (or prompt + completion)."""

    limit: int = 10_000

    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        for p in prompts:
            if len(p) >= self.limit:
                raise ContextLengthError(f"prompts: {len(p)} chars, the model takes {self.limit}")
        return await super().generate(prompts, params)

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        for r in requests:
            if len(r.prompt) + len(r.completion) > self.limit:
                raise ContextLengthError(f"completion: over {self.limit} chars")
        return await super().logprobs(requests)


@dataclass
class ShortScorer(FakeScorer):
    limit: int = 10_000

    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        for r in requests:
            if len(r.question) + sum(len(s) for s in r.steps) > self.limit:
                raise ContextLengthError(f"steps: over {self.limit} chars")
        return await super().score(requests)


def short_scorer(name: str, limit: int) -> ShortScorer:
    base = keyword_scorer(name)
    return ShortScorer(name, base.score_fn, limit=limit)


async def test_a_refinement_prompt_too_long_for_the_refiner_drops_that_candidate_only() -> None:
    engines = make_engines()
    engines.refine_global = ShortGenerator("refine_global", constant(RIGHT_GLOBAL), limit=20)
    solution = await solve(Q, engines, ALWAYS, "glore")
    assert [s.candidate.kind for s in solution.candidates] == [
        CandidateKind.DRAFT,
        CandidateKind.LOCAL,
    ]
    [dropped] = solution.dropped
    assert (dropped.kind, dropped.stage) == (CandidateKind.GLOBAL, Stage.REFINE)
    assert "the model takes 20" in dropped.message
    assert solution.plan.action is Action.REFINE


async def test_a_refinement_too_long_for_the_orm_is_dropped_and_the_draft_still_ranks() -> None:
    long_global = RIGHT_GLOBAL + "\n" + "and so on " * 20 + "\nThe answer is 20."
    engines = make_engines(global_text=long_global)
    # the ORM reads the question and the draft, but not the long global refinement
    engines.orm = short_scorer("orm", limit=len(Q) + len(WRONG_DRAFT) + 5)
    solution = await solve(Q, engines, ALWAYS, "glore")
    kinds = [s.candidate.kind for s in solution.candidates]
    assert kinds == [CandidateKind.DRAFT, CandidateKind.LOCAL]
    assert [(d.kind, d.stage) for d in solution.dropped] == [(CandidateKind.GLOBAL, Stage.SCORE)]
    assert all(s.orm is not None for s in solution.candidates)


async def test_a_draft_the_orm_cannot_read_is_kept_unscored_and_the_decision_says_why() -> None:
    engines = make_engines()
    engines.orm = short_scorer("orm", limit=10)
    solution = await solve(Q, engines, PipelineConfig(), "glore")
    assert (solution.plan.action, solution.plan.reason) == (Action.KEEP, Reason.DRAFT_TOO_LONG)
    assert solution.winner.candidate.kind is CandidateKind.DRAFT
    assert solution.winner.orm is None and solution.winner.unread
    assert engines.refine_global.calls == [] and engines.refine_local.calls == []
    greedy = await solve(Q, engines, PipelineConfig(), "greedy")
    assert greedy.winner.candidate.text == solution.winner.candidate.text


async def test_a_sorm_that_cannot_read_the_draft_costs_only_the_local_refinement() -> None:
    engines = make_engines()
    engines.sorm = short_scorer("sorm", limit=10)
    solution = await solve(Q, engines, ALWAYS, "glore")
    assert [s.candidate.kind for s in solution.candidates] == [
        CandidateKind.DRAFT,
        CandidateKind.GLOBAL,
    ]
    assert [(d.kind, d.stage) for d in solution.dropped] == [(CandidateKind.LOCAL, Stage.SCORE)]
    assert solution.draft is not None and solution.draft.orm is not None


async def test_best_of_n_drops_a_sample_the_reranker_cannot_read() -> None:
    texts = [
        "1 + 1 = 2\nThe answer is 2.",
        "1 + 1 = 2\n" + "more words " * 30 + "\nThe answer is 2.",
    ]
    engines = make_engines()
    engines.policy = ShortGenerator("policy", lambda prompt, i: texts[i % 2], limit=len(Q) + 100)
    cfg = PipelineConfig(n=2, reranker=POLICY_LIKELIHOOD)
    solution = await solve(Q, engines, cfg, "best_of_n")
    assert [s.candidate.label for s in solution.candidates] == ["sample_1"]
    [dropped] = solution.dropped
    assert (dropped.label, dropped.stage) == ("sample_2", Stage.RERANK)


async def test_a_draft_prompt_that_does_not_fit_is_still_an_error() -> None:
    engines = make_engines()
    engines.policy = ShortGenerator("policy", constant(WRONG_DRAFT), limit=len(Q))
    with pytest.raises(ContextLengthError):
        await solve(Q, engines, PipelineConfig(), "glore")
