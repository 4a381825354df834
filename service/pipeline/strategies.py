"""The strategies, one signature each, looked up by name; the service and the evaluation both
call them, so online answers and offline numbers come from the same code."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace

from engines.base import Role, Scorer
from service.pipeline.decide import decide
from service.pipeline.draft import draft_solution, sample_solutions
from service.pipeline.refine import refine
from service.pipeline.rerank import keep_readable, pick, rank, rerank
from service.pipeline.score import score, unscored
from service.pipeline.types import (
    Action,
    Candidate,
    CandidateKind,
    Dropped,
    Engines,
    PipelineConfig,
    Plan,
    Reason,
    Scored,
    Solution,
    Stage,
    StrategyName,
    count_tokens,
    timed,
)

Strategy = Callable[[str, Engines, PipelineConfig], Awaitable[Solution]]

STRATEGIES: dict[StrategyName, Strategy] = {}

# Which roles each strategy calls: the service checks they are loaded, the evaluation can load
# only those.
REQUIRED_ROLES: dict[StrategyName, frozenset[Role]] = {
    StrategyName.GREEDY: frozenset({Role.POLICY, Role.ORM}),
    StrategyName.BEST_OF_N: frozenset({Role.POLICY, Role.ORM}),
    StrategyName.GLORE: frozenset(Role),
    StrategyName.GLOBAL_ONLY: frozenset({Role.POLICY, Role.ORM, Role.REFINE_GLOBAL}),
    StrategyName.LOCAL_ONLY: frozenset({Role.POLICY, Role.ORM, Role.SORM, Role.REFINE_LOCAL}),
    StrategyName.SELF_CONSISTENCY: frozenset({Role.POLICY}),
}


def register(name: StrategyName) -> Callable[[Strategy], Strategy]:
    def wrap(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return wrap


def get_strategy(name: str | StrategyName) -> Strategy:
    """The strategy called `name`; a ValueError lists the known ones."""
    try:
        return STRATEGIES[StrategyName(name)]
    except ValueError:
        known = ", ".join(s.value for s in STRATEGIES)
        raise ValueError(f"unknown strategy {name!r}; known: {known}") from None


async def solve(
    question: str, engines: Engines, cfg: PipelineConfig, strategy: str | StrategyName
) -> Solution:
    return await get_strategy(strategy)(question, engines, cfg)


# What the strategies that never refine decide.
_KEPT = Plan(Action.KEEP, Reason.NO_REFINEMENT)


def _solution(
    name: StrategyName,
    winner: Scored,
    candidates: list[Scored],
    plan: Plan,
    timings: dict[Stage, float],
    generated: list[Candidate],
    *,
    votes: dict[str, int] | None = None,
    dropped: list[Dropped] | None = None,
) -> Solution:
    """The strategy's solution, with the tokens of what it `generated` counted by role."""
    solution = Solution(
        name, winner, candidates, plan, timings, votes=votes, dropped=list(dropped or [])
    )
    count_tokens(solution.tokens, generated)
    return solution


async def _draft(
    question: str,
    engines: Engines,
    cfg: PipelineConfig,
    timings: dict[Stage, float],
    sorm: Scorer | None = None,
) -> tuple[Candidate, Scored]:
    """The policy's greedy draft and the ORM's (and, when given, the SORM's) reading of it."""
    with timed(timings, Stage.DRAFT):
        draft = await draft_solution(question, engines.policy, cfg)
    with timed(timings, Stage.SCORE):
        [read] = await score(question, [draft], engines.orm, sorm)
    return draft, read


@register(StrategyName.GREEDY)
async def greedy(question: str, engines: Engines, cfg: PipelineConfig) -> Solution:
    """The policy's greedy draft, as is (the ORM score is reported, not acted on)."""
    timings: dict[Stage, float] = {}
    draft, read = await _draft(question, engines, cfg, timings)
    # The ORM's score is only reported: a draft it cannot read is served unscored.
    scored = [read if read.too_long is None else unscored(read)]
    return _solution(StrategyName.GREEDY, scored[0], scored, _KEPT, timings, [draft])


@register(StrategyName.BEST_OF_N)
async def best_of_n(question: str, engines: Engines, cfg: PipelineConfig) -> Solution:
    """The paper's baseline: n samples from the policy, reranked (by the ORM in the paper)."""
    timings: dict[Stage, float] = {}
    with timed(timings, Stage.SAMPLE):
        samples = await sample_solutions(question, engines.policy, cfg)
    with timed(timings, Stage.RERANK):
        # A sample too long for a model's context is dropped (the first stays if all are).
        readable, dropped = keep_readable(await score(question, samples, engines.orm), Stage.SCORE)
        scored, unread = keep_readable(
            await rank(question, readable, engines.policy, cfg.reranker), Stage.RERANK
        )
        winner = pick(scored)
    return _solution(
        StrategyName.BEST_OF_N, winner, scored, _KEPT, timings, samples, dropped=[*dropped, *unread]
    )


def majority_vote(samples: Sequence[Candidate]) -> tuple[int | None, dict[str, int]]:
    """The index of the sample that carries the majority answer, and every answer's votes.

    Samples without a stated answer do not vote. Ties go to the answer stated first, and the
    answer is carried by its first sample: a deterministic rule that needs no reward model.
    None when no sample states an answer.
    """
    votes = Counter(s.answer for s in samples if s.answer is not None)
    if not votes:
        return None, {}
    # Counter keeps first-seen order, and max keeps the first of equals: ties go to the earliest.
    answer = max(votes, key=lambda a: votes[a])
    return next(i for i, s in enumerate(samples) if s.answer == answer), dict(votes)


@register(StrategyName.SELF_CONSISTENCY)
async def self_consistency(question: str, engines: Engines, cfg: PipelineConfig) -> Solution:
    """Self-consistency (Wang et al., 2023): n samples from the policy, the most frequent final
    answer wins. No reward model is consulted, so the candidates carry no ORM score."""
    timings: dict[Stage, float] = {}
    with timed(timings, Stage.SAMPLE):
        samples = await sample_solutions(question, engines.policy, cfg)
    with timed(timings, Stage.RERANK):
        winner, votes = majority_vote(samples)
    scored = [Scored(s, None) for s in samples]
    return _solution(
        StrategyName.SELF_CONSISTENCY,
        scored[winner or 0],
        scored,
        _KEPT,
        timings,
        samples,
        votes=votes,
    )


async def _draft_and_refine(
    name: StrategyName,
    kinds: Collection[CandidateKind],
    question: str,
    engines: Engines,
    cfg: PipelineConfig,
) -> Solution:
    """Draft, score, decide, refine, rerank: the paper's figure, top to bottom."""
    timings: dict[Stage, float] = {}
    # The SORM only matters where a local critique must be placed.
    sorm = engines.sorm if CandidateKind.LOCAL in kinds else None
    draft, read = await _draft(question, engines, cfg, timings, sorm)
    if read.orm is None and read.too_long is not None:
        # Nothing can judge this draft, and a refinement prompt (which holds it) would not fit
        # either: it is served as it is, unscored, and the decision says why.
        plan = Plan(Action.KEEP, Reason.DRAFT_TOO_LONG)
        return _solution(name, unscored(read), [unscored(read)], plan, timings, [draft])
    # Here the ORM has read the draft; `too_long` can only say that the SORM could not.
    sorm_refused, read = read.too_long, replace(read, too_long=None)
    dropped: list[Dropped] = []
    with timed(timings, Stage.DECIDE):
        plan = decide(read, cfg)
    if sorm_refused and plan.action is Action.REFINE and CandidateKind.LOCAL in kinds:
        # No SORM reading, no step to place the critique at: the local refinement is lost.
        dropped.append(Dropped(CandidateKind.LOCAL, "local", Stage.SCORE, sorm_refused))
    with timed(timings, Stage.REFINE):
        refinements, not_refined = await refine(question, draft, plan, engines, cfg, kinds)
    with timed(timings, Stage.RERANK):
        winner, candidates, not_ranked = await rerank(
            question, [read], refinements, engines.orm, engines.policy, cfg.reranker
        )
    return _solution(
        name,
        winner,
        candidates,
        plan,
        timings,
        [draft, *refinements],
        dropped=[*dropped, *not_refined, *not_ranked],
    )


@register(StrategyName.GLORE)
async def glore(question: str, engines: Engines, cfg: PipelineConfig) -> Solution:
    """GLoRe: an ORM-gated draft, refined globally and locally, reranked (by the ORM in the
    paper; by the run's chosen reranker here, see engines.reranker)."""
    return await _draft_and_refine(
        StrategyName.GLORE, (CandidateKind.GLOBAL, CandidateKind.LOCAL), question, engines, cfg
    )


@register(StrategyName.GLOBAL_ONLY)
async def global_only(question: str, engines: Engines, cfg: PipelineConfig) -> Solution:
    """The ablation with the global refiner alone: rerank {draft, global}."""
    return await _draft_and_refine(
        StrategyName.GLOBAL_ONLY, (CandidateKind.GLOBAL,), question, engines, cfg
    )


@register(StrategyName.LOCAL_ONLY)
async def local_only(question: str, engines: Engines, cfg: PipelineConfig) -> Solution:
    """The ablation with the SORM-placed local refiner alone: rerank {draft, local}."""
    return await _draft_and_refine(
        StrategyName.LOCAL_ONLY, (CandidateKind.LOCAL,), question, engines, cfg
    )
