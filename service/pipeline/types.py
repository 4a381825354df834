"""The pipeline's vocabulary: engines it needs, its config, candidates, scores, plans, solutions.

Plain frozen dataclasses, free of HTTP and metrics, so the evaluation can run the same strategies
offline and read the same results the service returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from engines.base import (
    EngineHealth,
    FinishReason,
    Generator,
    Role,
    Scorer,
    StepScores,
    TokenLogprobs,
)
from engines.reranker import ORM_RERANKER, Readings, Reranker


class Engines(Protocol):
    """The five models a strategy may call (engines.registry.EngineSet satisfies it)."""

    @property
    def policy(self) -> Generator: ...

    @property
    def refine_global(self) -> Generator: ...

    @property
    def refine_local(self) -> Generator: ...

    @property
    def orm(self) -> Scorer: ...

    @property
    def sorm(self) -> Scorer: ...


class ServedEngines(Engines, Protocol):
    """What the service additionally needs of a loaded engine set: health and shutdown."""

    def health(self) -> dict[Role, EngineHealth]: ...

    async def close(self) -> None: ...


class StrategyName(StrEnum):
    GLORE = "glore"
    GREEDY = "greedy"
    BEST_OF_N = "best_of_n"
    GLOBAL_ONLY = "global_only"
    LOCAL_ONLY = "local_only"
    SELF_CONSISTENCY = "self_consistency"


class RefineMode(StrEnum):
    AUTO = "auto"  # refine only when the draft's ORM outcome score is below the threshold
    ALWAYS = "always"


class LocalWhenUnflagged(StrEnum):
    """Where the local critique goes when the plan is to refine but the SORM flags no step."""

    SKIP = "skip"  # the paper: no local refinement (the global one still runs)
    LOWEST = "lowest"  # the step the SORM trusts least (earliest on ties)


class Stage(StrEnum):
    DRAFT = "draft"
    SAMPLE = "sample"
    SCORE = "score"
    DECIDE = "decide"
    REFINE = "refine"
    RERANK = "rerank"


class CandidateKind(StrEnum):
    DRAFT = "draft"
    GLOBAL = "global"
    LOCAL = "local"
    SAMPLE = "sample"


class Action(StrEnum):
    KEEP = "keep"
    REFINE = "refine"


class Reason(StrEnum):
    """Why the decision went the way it did (a small fixed set: also a metric label)."""

    ORM_ABOVE_THRESHOLD = "orm_above_threshold"
    ORM_BELOW_THRESHOLD = "orm_below_threshold"
    REFINE_ALWAYS = "refine_always"
    EMPTY_DRAFT = "empty_draft"
    NO_REFINEMENT = "strategy_does_not_refine"
    # Refining, but the SORM flags no step, so (as in the paper) only globally.
    NO_STEP_FLAGGED = "no_step_flagged"
    # The draft and the question together do not fit the ORM's context: nothing can judge it,
    # and a refinement prompt (which holds the draft) would not fit either. It is kept unscored.
    DRAFT_TOO_LONG = "draft_too_long"


@dataclass(frozen=True)
class PipelineConfig:
    """Knobs of one solve. `temperature=None` means each strategy's default (see strategies)."""

    refine: RefineMode = RefineMode.AUTO
    orm_threshold: float = 0.5
    sorm_threshold: float = 0.5
    max_new_tokens: int = 256
    temperature: float | None = None
    # best_of_n's and self_consistency's default, since n greedy samples are one sample
    sample_temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    n: int = 4
    # What orders the candidates (GLoRe's and best-of-n's): the run's chosen reranker, or the
    # paper's ORM. The ORM stays the "when" gate either way.
    reranker: Reranker = ORM_RERANKER
    local_when_unflagged: LocalWhenUnflagged = LocalWhenUnflagged.SKIP

    def __post_init__(self) -> None:
        for name in ("orm_threshold", "sorm_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError("temperature must be >= 0")


@dataclass(frozen=True)
class Candidate:
    """One solution the pipeline produced, with the role that wrote it."""

    kind: CandidateKind
    text: str
    steps: tuple[str, ...]
    answer: str | None
    num_tokens: int
    finish_reason: FinishReason
    role: Role
    index: int = 0  # which sample, for best_of_n and self_consistency

    @property
    def label(self) -> str:
        """`draft`, `global`, `local` or `sample_k` (k counts from 1)."""
        return f"sample_{self.index + 1}" if self.kind is CandidateKind.SAMPLE else self.kind.value


@dataclass(frozen=True)
class Scored:
    """A candidate and its reward-model readings (None: not scored, e.g. a solution with no
    steps, or the SORM where the strategy does not consult it)."""

    candidate: Candidate
    orm: StepScores | None
    sorm: StepScores | None = None
    # The policy's token log-probabilities of the solution (read when the reranker needs them).
    logprobs: TokenLogprobs | None = None
    # The reranker's score (None until ranked); only the order inside one question matters.
    rank_score: float | None = None
    # Why a model could not read this candidate (its input exceeds that model's context);
    # None when every model that was asked could.
    too_long: str | None = None
    # Kept although a model could not read it (the draft, the answer of last resort): it has
    # no readings and ranks last.
    unread: bool = False

    @property
    def orm_score(self) -> float:
        """The ORM's outcome probability; 0 for a solution with no steps, which is no answer."""
        return self.orm.outcome_prob if self.orm is not None else 0.0

    @property
    def readings(self) -> Readings:
        return Readings(self.orm, self.logprobs, str(self.candidate.kind))


@dataclass(frozen=True)
class Plan:
    """The decision on a draft: keep it, or refine it (locally before `local_target`)."""

    action: Action
    reason: Reason
    # First step whose SORM score is below the threshold; None when no step is.
    first_flagged_step: int | None = None
    # Where the local critique goes: the first flagged step; when the SORM flags none, nowhere
    # (the paper), or with local_when_unflagged=lowest the step with the lowest SORM score.
    local_target: int | None = None


@dataclass(frozen=True)
class Dropped:
    """A candidate the pipeline gave up on because an input did not fit a model's context: its
    refinement prompt (stage refine), its reward-model input (score) or the policy's reading of
    it for the reranker (rerank). The solve goes on without it."""

    kind: CandidateKind
    label: str
    stage: Stage
    message: str


@dataclass
class Solution:
    """What a strategy returns: the winner, every candidate, the decision, timings and tokens."""

    strategy: StrategyName
    winner: Scored
    candidates: list[Scored]
    plan: Plan
    timings: dict[Stage, float] = field(default_factory=dict)
    tokens: dict[Role, int] = field(default_factory=dict)
    # self_consistency: how many samples stated each answer (first-stated first); else None.
    votes: dict[str, int] | None = None
    # Candidates given up on because an input did not fit a model's context.
    dropped: list[Dropped] = field(default_factory=list)

    @property
    def draft(self) -> Scored | None:
        return next((s for s in self.candidates if s.candidate.kind is CandidateKind.DRAFT), None)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


@contextmanager
def timed(timings: dict[Stage, float], stage: Stage) -> Iterator[None]:
    """Add the wall time of the block to `timings[stage]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def count_tokens(tokens: dict[Role, int], candidates: list[Candidate]) -> None:
    for c in candidates:
        tokens[c.role] = tokens.get(c.role, 0) + c.num_tokens
