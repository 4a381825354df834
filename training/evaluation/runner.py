"""Run every strategy of the service's pipeline on held-out problems and keep what each did.

The strategies are the service's own (`service.pipeline.strategies`), called offline, so these
numbers and the service's answers come from the same code. Each question's record also keeps
the draft's per-step ORM/SORM readings and its exact step labels from the task's checker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tqdm.auto import tqdm

from engines.base import LikelihoodRequest
from engines.reranker import FEATURES, ORM_RERANKER
from engines.text import join_steps, policy_prompt
from service.pipeline.strategies import solve
from service.pipeline.types import (
    Engines,
    PipelineConfig,
    RefineMode,
    Scored,
    Solution,
    StrategyName,
)
from training.tasks import Problem, check_solution


@dataclass(frozen=True)
class Method:
    """One row of the "how" table: a service strategy with its knobs."""

    name: str
    strategy: StrategyName
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


# The paper's comparison at one policy, and self-consistency. GLoRe's SORM threshold and the
# ORM gate of ORM-gated GLoRe come from validation (evaluate.evaluate_run).
METHODS: tuple[Method, ...] = (
    Method("greedy", StrategyName.GREEDY, {}, "the policy's greedy draft"),
    Method(
        "best_of_3", StrategyName.BEST_OF_N, {"n": 3}, "3 samples, reranked (the paper's baseline)"
    ),
    Method(
        "global_only",
        StrategyName.GLOBAL_ONLY,
        {"refine": RefineMode.ALWAYS},
        "rerank of {draft, global}",
    ),
    Method(
        "local_only",
        StrategyName.LOCAL_ONLY,
        {"refine": RefineMode.ALWAYS},
        "rerank of {draft, local}, SORM places the critique",
    ),
    Method(
        "glore",
        StrategyName.GLORE,
        {"refine": RefineMode.ALWAYS},
        "rerank of {draft, global, local}",
    ),
    Method(
        "glore_gated",
        StrategyName.GLORE,
        {"refine": RefineMode.AUTO},
        "GLoRe, refining only when the draft's ORM score is below the threshold",
    ),
    # The paper's own reranker beside the run's chosen one (the fidelity rows).
    Method(
        "best_of_3_orm",
        StrategyName.BEST_OF_N,
        {"n": 3, "reranker": ORM_RERANKER},
        "3 samples, reranked by the ORM (the paper's baseline as published)",
    ),
    Method(
        "glore_orm",
        StrategyName.GLORE,
        {"refine": RefineMode.ALWAYS, "reranker": ORM_RERANKER},
        "{draft, global, local} reranked by the ORM (the paper's GLoRe as published)",
    ),
    # The baseline users would pick instead, at a few budgets: n = 2 sits under GLoRe's tokens
    # per question, 3 near them, 5 above (see report.self_consistency_comparator).
    *(
        Method(
            f"self_consistency_{n}",
            StrategyName.SELF_CONSISTENCY,
            {"n": n},
            f"majority vote over {n} samples, no reward model",
        )
        for n in (2, 3, 5)
    ),
)
# Whose candidates every reranker is measured on: GLoRe's, and best-of-3's samples.
RANKED_METHODS = ("glore", "best_of_3")


@dataclass(frozen=True)
class Outcome:
    answer: str | None
    correct: bool
    tokens: int
    winner: str


@dataclass(frozen=True)
class RankedCandidate:
    label: str
    correct: bool
    features: dict[str, float]


@dataclass
class QuestionRecord:
    """What every method did on one question, and the draft's step-level readings."""

    problem_id: str
    reference: str
    draft_steps: list[str]
    draft_answer: str | None
    draft_correct: bool
    draft_tokens: int
    exact_prefix_ok: list[bool]  # the checker's label of each draft step (still on track?)
    orm_steps: list[float]  # the ORM's reading at each draft step
    sorm_steps: list[float]  # the SORM's reading at each draft step
    candidates: dict[str, Outcome]  # draft / global / local, from GLoRe with refine=always
    candidate_orm: dict[str, float]
    methods: dict[str, Outcome]
    vstar: list[bool] | None = None  # V* labels of the draft's steps from fresh rollouts
    # For each method in RANKED_METHODS: every candidate's label, correctness and reranker
    # features (engines.reranker.FEATURES), so any reranker can be measured offline.
    ranked: dict[str, list[RankedCandidate]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuestionRecord:
        d = dict(d)
        d["candidates"] = {k: Outcome(**v) for k, v in d["candidates"].items()}
        d["methods"] = {k: Outcome(**v) for k, v in d["methods"].items()}
        d["ranked"] = {
            k: [RankedCandidate(**c) for c in v] for k, v in (d.get("ranked") or {}).items()
        }
        return cls(**d)


def _outcome(problem: Problem, scored: Scored, tokens: int) -> Outcome:
    c = scored.candidate
    correct = bool(c.steps) and check_solution(problem, list(c.steps)).answer_correct
    return Outcome(c.answer, correct, tokens, c.label)


def _config(base: PipelineConfig, method: Method) -> PipelineConfig:
    return replace(base, **method.overrides)


async def evaluate_question(
    problem: Problem,
    engines: Engines,
    base: PipelineConfig,
    methods: Sequence[Method] = METHODS,
) -> QuestionRecord:
    """Run every method on one question (concurrently: the engines batch across them)."""
    solutions: list[Solution] = await asyncio.gather(
        *(solve(problem.question, engines, _config(base, m), m.strategy) for m in methods)
    )
    by_name = dict(zip((m.name for m in methods), solutions, strict=True))
    ranked = await _ranked(problem, engines, by_name)
    full = by_name["glore"]
    draft = full.draft
    if draft is None:
        raise RuntimeError(f"{problem.id}: GLoRe returned no draft")
    steps = list(draft.candidate.steps)
    check = check_solution(problem, steps)
    candidates = {
        s.candidate.label: _outcome(problem, s, s.candidate.num_tokens) for s in full.candidates
    }
    return QuestionRecord(
        problem_id=problem.id,
        reference=problem.answer,
        draft_steps=steps,
        draft_answer=draft.candidate.answer,
        draft_correct=check.answer_correct,
        draft_tokens=draft.candidate.num_tokens,
        exact_prefix_ok=list(check.prefix_ok) if steps else [],
        orm_steps=list(draft.orm.step_probs) if draft.orm else [],
        sorm_steps=list(draft.sorm.step_probs) if draft.sorm else [],
        candidates=candidates,
        candidate_orm={s.candidate.label: s.orm_score for s in full.candidates},
        methods={
            name: _outcome(problem, sol.winner, sol.total_tokens) for name, sol in by_name.items()
        },
        ranked=ranked,
    )


async def _ranked(
    problem: Problem, engines: Engines, solutions: dict[str, Solution]
) -> dict[str, list[RankedCandidate]]:
    """Every candidate of the RANKED_METHODS with its features; the policy's log-probabilities
    are read here (one call) where the strategy's own reranker did not need them."""
    todo = [
        s
        for name in RANKED_METHODS
        if name in solutions
        for s in solutions[name].candidates
        if s.candidate.steps and s.logprobs is None
    ]
    read = {}
    if todo:
        prompt = policy_prompt(problem.question)
        lps = await engines.policy.logprobs(
            [LikelihoodRequest(prompt, join_steps(s.candidate.steps)) for s in todo]
        )
        read = {id(s): lp for s, lp in zip(todo, lps, strict=True)}
    out: dict[str, list[RankedCandidate]] = {}
    for name in RANKED_METHODS:
        if name not in solutions:
            continue
        rows = []
        for s in solutions[name].candidates:
            readings = replace(s, logprobs=s.logprobs or read.get(id(s))).readings
            # A candidate without steps states no answer: no features, and it never wins.
            features = (
                {f: float(fn(readings)) for f, fn in FEATURES.items()} if s.candidate.steps else {}
            )
            rows.append(
                RankedCandidate(s.candidate.label, _outcome(problem, s, 0).correct, features)
            )
        out[name] = rows
    return out


async def evaluate(
    problems: Sequence[Problem],
    engines: Engines,
    base: PipelineConfig,
    *,
    methods: Sequence[Method] = METHODS,
    concurrency: int = 32,
    desc: str = "eval",
) -> list[QuestionRecord]:
    """Every method on every problem, `concurrency` questions in flight, records in order."""
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(problems), desc=desc, unit="q")

    async def one(p: Problem) -> QuestionRecord:
        async with gate:
            record = await evaluate_question(p, engines, base, methods)
        bar.update(1)
        return record

    try:
        return list(await asyncio.gather(*(one(p) for p in problems)))
    finally:
        bar.close()


def oracle_outcomes(record: QuestionRecord) -> dict[str, Outcome]:
    """Upper bounds from GLoRe's candidates: a perfect reranker, and a perfect "when" gate."""
    glore = record.methods["glore"]
    cands = record.candidates
    best = next((c for c in cands.values() if c.correct), cands["draft"])
    draft = cands["draft"]
    gate = Outcome(draft.answer, True, record.draft_tokens, "draft") if draft.correct else glore
    return {
        "oracle_best_candidate": Outcome(best.answer, best.correct, glore.tokens, best.winner),
        "oracle_refine_when_wrong": gate,
    }


async def greedy_correct(
    problems: Sequence[Problem],
    engines: Engines,
    base: PipelineConfig,
    *,
    concurrency: int = 32,
    desc: str = "greedy",
) -> list[bool]:
    """Whether the service's greedy strategy answers each problem right (the draft alone: no
    reward model, no refinement), for the cheap generalisation splits."""
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(problems), desc=desc, unit="q")

    async def one(p: Problem) -> bool:
        async with gate:
            sol = await solve(p.question, engines, base, StrategyName.GREEDY)
        bar.update(1)
        steps = list(sol.winner.candidate.steps)
        return bool(steps) and check_solution(p, steps).answer_correct

    try:
        return list(await asyncio.gather(*(one(p) for p in problems)))
    finally:
        bar.close()
