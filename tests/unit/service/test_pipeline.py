"""The pipeline's stages and strategies on typed fake engines."""

from __future__ import annotations

import asyncio

import pytest

from engines.base import Completion, Role, StepScores
from engines.text import CRITIQUE_MARKER
from service.pipeline import (
    REQUIRED_ROLES,
    Action,
    Candidate,
    CandidateKind,
    LocalWhenUnflagged,
    PipelineConfig,
    Reason,
    RefineMode,
    Stage,
    StrategyName,
    decide,
    get_strategy,
    solve,
)
from service.pipeline.draft import to_candidate
from service.pipeline.rerank import pick
from service.pipeline.strategies import majority_vote
from service.pipeline.types import Scored
from tests.support.fakes import (
    LOCAL_CONTINUATION,
    RIGHT_GLOBAL,
    WRONG_DRAFT,
    FakeGenerator,
    constant,
    make_engines,
)

Q = "Tom has 2 apples and buys 3 more bags of 4. How many?"


def scored(orm: list[float] | None, sorm: list[float] | None, text: str = "a\nb\nc") -> Scored:
    cand = to_candidate(Completion(text, 3, "stop"), CandidateKind.DRAFT, Role.POLICY)
    return Scored(
        cand,
        StepScores(tuple(orm)) if orm else None,
        StepScores(tuple(sorm)) if sorm else None,
    )


def test_decide_marks_first_step_below_threshold() -> None:
    plan = decide(scored([0.9, 0.8, 0.2], [0.9, 0.3, 0.1]), PipelineConfig())
    assert plan.action is Action.REFINE
    assert plan.reason is Reason.ORM_BELOW_THRESHOLD
    assert plan.first_flagged_step == 1
    assert plan.local_target == 1


def test_decide_keeps_draft_when_orm_outcome_reaches_threshold() -> None:
    plan = decide(scored([0.1, 0.1, 0.5], [0.9, 0.3, 0.1]), PipelineConfig(orm_threshold=0.5))
    assert plan.action is Action.KEEP
    assert plan.reason is Reason.ORM_ABOVE_THRESHOLD
    # the flagged step is still reported, but nothing is refined
    assert plan.first_flagged_step == 1
    assert plan.local_target is None


def test_decide_refines_a_confident_draft_when_refine_is_always() -> None:
    plan = decide(scored([0.99] * 3, [0.99, 0.2, 0.99]), PipelineConfig(refine=RefineMode.ALWAYS))
    assert plan.action is Action.REFINE
    assert plan.reason is Reason.REFINE_ALWAYS
    assert plan.local_target == 1


def test_decide_refines_only_globally_when_the_sorm_flags_no_step() -> None:
    for refine in RefineMode:
        plan = decide(scored([0.2, 0.2, 0.2], [0.9, 0.6, 0.7]), PipelineConfig(refine=refine))
        assert plan.action is Action.REFINE
        assert plan.reason is Reason.NO_STEP_FLAGGED
        assert (plan.first_flagged_step, plan.local_target) == (None, None)


def test_decide_targets_the_least_trusted_step_when_asked_to_and_the_sorm_flags_none() -> None:
    cfg = PipelineConfig(local_when_unflagged=LocalWhenUnflagged.LOWEST)
    plan = decide(scored([0.2, 0.2, 0.2], [0.9, 0.6, 0.6]), cfg)
    assert plan.reason is Reason.ORM_BELOW_THRESHOLD
    assert plan.first_flagged_step is None
    assert plan.local_target == 1  # the earlier of the two least trusted steps


def test_decide_keeps_a_confident_draft_whatever_the_sorm_says() -> None:
    plan = decide(scored([0.9, 0.9, 0.9], [0.9, 0.9, 0.9]), PipelineConfig())
    assert (plan.action, plan.reason) == (Action.KEEP, Reason.ORM_ABOVE_THRESHOLD)


def test_decide_uses_the_sorm_threshold_from_the_config() -> None:
    plan = decide(scored([0.2] * 3, [0.9, 0.6, 0.7]), PipelineConfig(sorm_threshold=0.65))
    assert plan.first_flagged_step == 1


def test_decide_refines_an_empty_draft_without_a_local_target() -> None:
    plan = decide(scored(None, None, text=""), PipelineConfig())
    assert plan.action is Action.REFINE
    assert plan.reason is Reason.EMPTY_DRAFT
    assert plan.local_target is None


def test_pick_prefers_the_earlier_candidate_on_a_tie() -> None:
    a, b = scored([0.7], None, "x"), scored([0.7], None, "y")
    assert pick([a, b]) is a
    assert pick([a, scored([0.71], None, "z")]).candidate.text == "z"


async def test_glore_refines_a_doubted_draft_and_the_orm_picks_the_best() -> None:
    engines = make_engines()
    sol = await solve(Q, engines, PipelineConfig(), "glore")
    assert sol.plan.action is Action.REFINE
    assert sol.plan.first_flagged_step == 1
    kinds = [s.candidate.kind for s in sol.candidates]
    assert kinds == [CandidateKind.DRAFT, CandidateKind.GLOBAL, CandidateKind.LOCAL]
    # global and local are both right (0.9); the global comes first, so it wins the tie
    assert sol.winner.candidate.kind is CandidateKind.GLOBAL
    assert sol.winner.candidate.answer == "20"
    assert sol.winner.candidate.text == RIGHT_GLOBAL
    assert sol.draft is not None and sol.draft.orm_score == pytest.approx(0.1)


async def test_glore_scores_every_draft_step_in_one_call_per_reward_model() -> None:
    engines = make_engines()
    sol = await solve(Q, engines, PipelineConfig(), "glore")
    orm_calls, sorm_calls = engines.orm.calls, engines.sorm.calls  # type: ignore[attr-defined]
    assert len(sorm_calls) == 1 and len(sorm_calls[0]) == 1
    assert sorm_calls[0][0].steps == tuple(WRONG_DRAFT.split("\n"))
    # the ORM: once for the draft, once for both refinements together
    assert [len(c) for c in orm_calls] == [1, 2]
    assert sol.draft is not None and sol.draft.sorm is not None
    assert sol.draft.sorm.step_probs == (0.9, 0.1, 0.1)


async def test_local_refinement_marks_the_flagged_step_and_keeps_the_prefix() -> None:
    engines = make_engines()
    sol = await solve(Q, engines, PipelineConfig(), "local_only")
    [(prompts, _)] = engines.refine_local.calls  # type: ignore[attr-defined]
    assert f"{CRITIQUE_MARKER} 5 * 4 = 21 wrong" in prompts[0]
    assert prompts[0].endswith("Refined:\n2 + 3 = 5\n")
    local = sol.candidates[-1].candidate
    assert local.kind is CandidateKind.LOCAL
    assert local.steps == ("2 + 3 = 5", *LOCAL_CONTINUATION.split("\n"))
    assert sol.winner.candidate is local
    assert engines.refine_global.calls == []  # type: ignore[attr-defined]


async def test_global_and_local_refinements_run_concurrently() -> None:
    engines = make_engines()
    both_started = asyncio.Event()
    running = 0

    def gated(text: str) -> FakeGenerator:
        gen = FakeGenerator("gated", constant(text))
        original = gen.generate

        async def generate(prompts, params):  # type: ignore[no-untyped-def]
            nonlocal running
            running += 1
            if running == 2:
                both_started.set()
            # if the refiners ran one after the other, this would never be set
            await asyncio.wait_for(both_started.wait(), timeout=2)
            return await original(prompts, params)

        gen.generate = generate  # type: ignore[method-assign]
        return gen

    engines.refine_global = gated(RIGHT_GLOBAL)
    engines.refine_local = gated(LOCAL_CONTINUATION)
    sol = await solve(Q, engines, PipelineConfig(), "glore")
    assert len(sol.candidates) == 3


async def test_glore_keeps_a_confident_draft_without_calling_the_refiners() -> None:
    engines = make_engines(draft=RIGHT_GLOBAL)
    sol = await solve(Q, engines, PipelineConfig(), "glore")
    assert sol.plan.action is Action.KEEP
    assert sol.winner.candidate.kind is CandidateKind.DRAFT
    assert engines.refine_global.calls == engines.refine_local.calls == []  # type: ignore[attr-defined]
    assert set(sol.tokens) == {Role.POLICY}


async def test_refine_always_refines_a_confident_draft_but_the_draft_can_still_win() -> None:
    engines = make_engines(draft=RIGHT_GLOBAL, global_text=WRONG_DRAFT)
    cfg = PipelineConfig(refine=RefineMode.ALWAYS, local_when_unflagged=LocalWhenUnflagged.LOWEST)
    sol = await solve(Q, engines, cfg, "glore")
    assert sol.plan.reason is Reason.REFINE_ALWAYS
    assert len(sol.candidates) == 3
    assert sol.winner.candidate.kind is CandidateKind.DRAFT


async def test_glore_refines_globally_alone_when_the_sorm_flags_no_step() -> None:
    engines = make_engines(draft=RIGHT_GLOBAL, global_text=WRONG_DRAFT)
    sol = await solve(Q, engines, PipelineConfig(refine=RefineMode.ALWAYS), "glore")
    assert sol.plan.reason is Reason.NO_STEP_FLAGGED
    assert [s.candidate.label for s in sol.candidates] == ["draft", "global"]
    assert engines.refine_local.calls == []  # type: ignore[attr-defined]


async def test_self_consistency_returns_the_first_sample_of_the_most_stated_answer() -> None:
    answers = ["5", None, "7", "7", "5", "7"]
    texts = [f"s = 1\nThe answer is {a}." if a else "no answer here" for a in answers]
    engines = make_engines()
    engines.policy = FakeGenerator("policy", lambda prompt, i: texts[i])
    sol = await solve(Q, engines, PipelineConfig(n=6, seed=3), "self_consistency")
    assert sol.votes == {"5": 2, "7": 3}
    assert sol.winner.candidate.label == "sample_3"
    assert sol.winner.candidate.answer == "7"
    [(_, params)] = engines.policy.calls  # type: ignore[attr-defined]
    assert (params.n, params.temperature, params.seed) == (6, 0.7, 3)
    # no reward model is consulted; every sample's tokens count
    assert engines.orm.calls == engines.sorm.calls == []  # type: ignore[attr-defined]
    assert all(s.orm is None for s in sol.candidates)
    assert sol.tokens == {Role.POLICY: sum(s.candidate.num_tokens for s in sol.candidates)}
    assert REQUIRED_ROLES[StrategyName.SELF_CONSISTENCY] == {Role.POLICY}


def test_majority_vote_breaks_ties_towards_the_answer_stated_first() -> None:
    def sample(answer: str | None) -> Candidate:
        text = "s = 1" + (f"\nThe answer is {answer}." if answer else "")
        return to_candidate(Completion(text, 3, "stop"), CandidateKind.SAMPLE, Role.POLICY)

    assert majority_vote([sample(None), sample("4"), sample("9"), sample("9"), sample("4")]) == (
        1,
        {"4": 2, "9": 2},
    )
    assert majority_vote([sample(None), sample(None)]) == (None, {})


async def test_self_consistency_without_any_stated_answer_returns_the_first_sample() -> None:
    engines = make_engines()
    engines.policy = FakeGenerator("policy", constant("no answer here"))
    sol = await solve(Q, engines, PipelineConfig(n=3), "self_consistency")
    assert sol.votes == {}
    assert sol.winner.candidate.label == "sample_1"


async def test_global_only_reranks_draft_and_global_without_the_sorm() -> None:
    engines = make_engines()
    sol = await solve(Q, engines, PipelineConfig(), "global_only")
    assert [s.candidate.label for s in sol.candidates] == ["draft", "global"]
    assert engines.sorm.calls == []  # type: ignore[attr-defined]


async def test_greedy_returns_the_draft_with_its_orm_score() -> None:
    engines = make_engines()
    sol = await solve(Q, engines, PipelineConfig(), "greedy")
    assert sol.winner.candidate.text == WRONG_DRAFT
    assert sol.winner.orm_score == pytest.approx(0.1)
    assert sol.plan.reason is Reason.NO_REFINEMENT
    [(_, params)] = engines.policy.calls  # type: ignore[attr-defined]
    assert params.temperature == 0.0


async def test_best_of_n_samples_n_and_the_orm_picks_the_best_sample() -> None:
    texts = [WRONG_DRAFT, WRONG_DRAFT, RIGHT_GLOBAL, WRONG_DRAFT]
    engines = make_engines()
    engines.policy = FakeGenerator("policy", lambda prompt, i: texts[i])
    sol = await solve(Q, engines, PipelineConfig(n=4, seed=7), "best_of_n")
    assert sol.winner.candidate.label == "sample_3"
    assert [s.candidate.label for s in sol.candidates] == [f"sample_{k}" for k in (1, 2, 3, 4)]
    [(_, params)] = engines.policy.calls  # type: ignore[attr-defined]
    assert params.n == 4 and params.temperature == 0.7 and params.seed == 7
    assert len(engines.orm.calls) == 1  # type: ignore[attr-defined]


async def test_strategies_record_timings_per_stage_and_tokens_per_role() -> None:
    sol = await solve(Q, make_engines(), PipelineConfig(), "glore")
    assert set(sol.timings) == {Stage.DRAFT, Stage.SCORE, Stage.DECIDE, Stage.REFINE, Stage.RERANK}
    assert all(t >= 0 for t in sol.timings.values())
    assert set(sol.tokens) == {Role.POLICY, Role.REFINE_GLOBAL, Role.REFINE_LOCAL}
    assert sol.total_tokens == sum(s.candidate.num_tokens for s in sol.candidates)


async def test_temperature_and_max_new_tokens_reach_every_generator() -> None:
    engines = make_engines()
    await solve(Q, engines, PipelineConfig(temperature=0.3, max_new_tokens=17), "glore")
    for gen in (engines.policy, engines.refine_global, engines.refine_local):
        [(_, params)] = gen.calls  # type: ignore[attr-defined]
        assert (params.temperature, params.max_new_tokens) == (0.3, 17)


async def test_an_empty_draft_is_refined_globally_and_scored_zero() -> None:
    engines = make_engines(draft="   \n  ")
    sol = await solve(Q, engines, PipelineConfig(), "glore")
    assert sol.plan.reason is Reason.EMPTY_DRAFT
    assert [s.candidate.label for s in sol.candidates] == ["draft", "global"]
    assert sol.candidates[0].orm_score == 0.0
    assert sol.winner.candidate.kind is CandidateKind.GLOBAL


async def test_cancelling_a_solve_cancels_the_model_call() -> None:
    engines = make_engines()
    gate = asyncio.Event()
    engines.policy = FakeGenerator("policy", constant(WRONG_DRAFT), gate=gate)
    task = asyncio.create_task(solve(Q, engines, PipelineConfig(), "glore"))
    await engines.policy.started.wait()  # type: ignore[attr-defined]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engines.policy.cancelled == 1  # type: ignore[attr-defined]


def test_get_strategy_names_the_known_strategies_for_an_unknown_one() -> None:
    with pytest.raises(ValueError, match="best_of_n"):
        get_strategy("beam")
    assert {s.value for s in StrategyName} == {
        "glore",
        "greedy",
        "best_of_n",
        "global_only",
        "local_only",
        "self_consistency",
    }


def test_pipeline_config_rejects_thresholds_outside_zero_one() -> None:
    with pytest.raises(ValueError, match="orm_threshold"):
        PipelineConfig(orm_threshold=1.5)


async def test_a_likelihood_reranker_reads_the_policy_once_and_can_overrule_the_orm() -> None:
    from engines.reranker import ORM_RERANKER, POLICY_LIKELIHOOD

    engines = make_engines()
    sol = await solve(Q, engines, PipelineConfig(reranker=POLICY_LIKELIHOOD), "glore")
    # the fake policy finds its own draft likeliest; the ORM doubted it (0.1)
    assert sol.winner.candidate.kind is CandidateKind.DRAFT
    [reads] = engines.policy.read_calls  # type: ignore[attr-defined]
    assert [r.completion for r in reads] == [s.candidate.text for s in sol.candidates]
    scores = [s.rank_score for s in sol.candidates]
    assert all(v is not None for v in scores) and scores[0] == max(scores)  # type: ignore[type-var]

    engines = make_engines()
    sol = await solve(Q, engines, PipelineConfig(reranker=ORM_RERANKER), "glore")
    assert sol.winner.candidate.kind is CandidateKind.GLOBAL
    assert engines.policy.read_calls == []  # type: ignore[attr-defined]  # the ORM needs no read

    texts = [RIGHT_GLOBAL, WRONG_DRAFT, RIGHT_GLOBAL]
    engines = make_engines()
    engines.policy = FakeGenerator("policy", lambda prompt, i: texts[i])
    sol = await solve(Q, engines, PipelineConfig(n=3, reranker=POLICY_LIKELIHOOD), "best_of_n")
    assert sol.winner.candidate.label == "sample_1"  # the first of the policy's favourite text
