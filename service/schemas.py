"""Wire models: /solve's request and response, and the OpenAI-compatible chat completion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engines.base import MAX_SEED, FinishReason
from engines.reranker import Reranker
from service.pipeline import (
    Action,
    CandidateKind,
    LocalWhenUnflagged,
    PipelineConfig,
    Reason,
    RefineMode,
    Scored,
    Solution,
    StrategyName,
)
from service.profile import QuestionWarning
from service.settings import Defaults, DefaultSource, Limits, Settings, pipeline_config

_SOLVE_EXAMPLE: dict[str, Any] = {
    "question": "Ann has 3 boxes of 12 pencils and gives away 5 pencils. How many are left?",
    "strategy": "glore",
    "refine": "auto",
    "max_new_tokens": 128,
    "include_trace": False,
}


def _absent(value: object) -> bool:
    return value is None


class Knobs(BaseModel):
    """The strategy and its knobs, shared by /solve and the chat endpoint. None: server default."""

    strategy: StrategyName | None = Field(
        default=None,
        description="glore (default), greedy, best_of_n, global_only, local_only, "
        "self_consistency (majority vote over n samples, no reward model).",
    )
    refine: RefineMode | None = Field(
        default=None,
        description="auto: refine only when the draft's ORM score is below orm_threshold; "
        "always: refine every draft.",
    )
    orm_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Refine when the draft's ORM score is below this."
    )
    sorm_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="A step whose SORM score is below this is flagged; the local critique goes "
        "before the first flagged step.",
    )
    local_when_unflagged: LocalWhenUnflagged | None = Field(
        default=None,
        description="When refining a draft whose steps the SORM flags none of: skip (the "
        "paper, default: refine globally only) or lowest (critique the step the SORM trusts "
        "least).",
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Sampling temperature for every generation (default: greedy drafts and "
        "refinements, 0.7 for best_of_n and self_consistency samples).",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Makes sampling reproducible (0 to 2^63 - 1, the range every backend takes).",
    )
    include_trace: bool = Field(default=False, description="Return every candidate's full text.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Time limit for this request, at most the server's limit."
    )

    def pipeline_config(
        self,
        defaults: Defaults,
        *,
        limits: Limits | None,
        reranker: Reranker,
        n: int | None,
        max_new_tokens: int | None,
    ) -> tuple[StrategyName, PipelineConfig]:
        """These knobs over the server's defaults (service.settings.pipeline_config); `n` and
        `max_new_tokens` are named differently by /solve and the chat route, so they come
        apart."""
        return pipeline_config(
            defaults,
            limits=limits,
            reranker=reranker,
            strategy=self.strategy,
            refine=self.refine,
            orm_threshold=self.orm_threshold,
            sorm_threshold=self.sorm_threshold,
            local_when_unflagged=self.local_when_unflagged,
            temperature=self.temperature,
            seed=self.seed,
            n=n,
            max_new_tokens=max_new_tokens,
        )


class SolveRequest(Knobs):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SOLVE_EXAMPLE]})

    question: str = Field(min_length=1, description="A grade-school math word problem.")
    n: int | None = Field(
        default=None, ge=1, description="best_of_n and self_consistency: how many samples."
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Per generation; bounded by the server's limit."
    )


class DroppedOut(BaseModel):
    candidate: str = Field(description="Which candidate: global, local or sample_k.")
    stage: str = Field(
        description="Where it was given up: refine (its refinement prompt does not fit the "
        "refiner's context), score (its reward-model input does not fit) or rerank (the "
        "policy's reading of it for the reranker does not fit)."
    )
    message: str = Field(description="The model's refusal: how many tokens, how many it takes.")


class WarningOut(BaseModel):
    code: str = Field(
        description="unseen_words, longer_than_training or unlikely_question (see docs/service.md)."
    )
    message: str


class Decision(BaseModel):
    action: Action = Field(description="keep the draft, or refine it.")
    reason: Reason
    refine_mode: RefineMode
    orm_threshold: float
    sorm_threshold: float
    local_when_unflagged: LocalWhenUnflagged
    first_flagged_step: int | None = Field(
        description="First draft step whose SORM score is below sorm_threshold (0-based)."
    )
    local_target_step: int | None = Field(
        description="Where the local critique went: the first flagged step, or, when none is "
        "flagged and local_when_unflagged is lowest, the draft step with the lowest SORM score; "
        "null when nothing was refined locally."
    )
    dropped: list[DroppedOut] = Field(
        default_factory=list,
        description="Candidates given up on because an input did not fit a model's context; "
        "the solve went on without them (a question whose draft prompt does not fit is a 422).",
    )


class CandidateOut(BaseModel):
    label: str = Field(description="draft, global, local or sample_k.")
    kind: CandidateKind
    orm_score: float | None = Field(
        description="The ORM's probability that the candidate is right (0 for a solution with "
        "no steps); null where the strategy does not consult the ORM (self_consistency)."
    )
    rank_score: float | None = Field(
        default=None,
        description="The reranker's score (higher wins; compare only within one response); "
        "null for a strategy that does not rerank.",
    )
    answer: str | None
    num_steps: int
    num_tokens: int
    finish_reason: FinishReason
    # Trace fields: present only with include_trace (and the SORM's only where it was consulted).
    text: str | None = Field(
        default=None, exclude_if=_absent, description="Full text (with include_trace)."
    )
    orm_step_scores: list[float] | None = Field(
        default=None, exclude_if=_absent, description="ORM score per step (with include_trace)."
    )
    sorm_step_scores: list[float] | None = Field(
        default=None, exclude_if=_absent, description="SORM score per step (with include_trace)."
    )


class Usage(BaseModel):
    completion_tokens: int = Field(description="Tokens generated by all models together.")
    by_role: dict[str, int] = Field(description="Tokens generated per role.")


class SolveResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "9b1f4c2a7e3d4b8f9a0c1d2e3f4a5b6c",
                    "strategy": "glore",
                    "answer": "31",
                    "solution": "3 * 12 = 36\n36 - 5 = 31\nThe answer is 31.",
                    "steps": ["3 * 12 = 36", "36 - 5 = 31", "The answer is 31."],
                    "winner": "global",
                    "sorm_step_scores": [0.91, 0.22, 0.18],
                    "first_flagged_step": 1,
                    "decision": {
                        "action": "refine",
                        "reason": "orm_below_threshold",
                        "refine_mode": "auto",
                        "orm_threshold": 0.5,
                        "sorm_threshold": 0.5,
                        "local_when_unflagged": "skip",
                        "first_flagged_step": 1,
                        "local_target_step": 1,
                    },
                    "candidates": [
                        {
                            "label": "draft",
                            "kind": "draft",
                            "orm_score": 0.21,
                            "answer": "32",
                            "num_steps": 3,
                            "num_tokens": 24,
                            "finish_reason": "stop",
                        },
                        {
                            "label": "global",
                            "kind": "global",
                            "orm_score": 0.87,
                            "answer": "31",
                            "num_steps": 3,
                            "num_tokens": 25,
                            "finish_reason": "stop",
                        },
                        {
                            "label": "local",
                            "kind": "local",
                            "orm_score": 0.83,
                            "answer": "31",
                            "num_steps": 3,
                            "num_tokens": 14,
                            "finish_reason": "stop",
                        },
                    ],
                    "timings": {
                        "draft": 0.061,
                        "score": 0.012,
                        "decide": 0.00001,
                        "refine": 0.074,
                        "rerank": 0.011,
                        "total": 0.16,
                    },
                    "usage": {
                        "completion_tokens": 63,
                        "by_role": {"policy": 24, "refine_global": 25, "refine_local": 14},
                    },
                }
            ]
        }
    )

    request_id: str
    strategy: StrategyName
    answer: str | None = Field(description="The final answer (normalised), null if none stated.")
    solution: str = Field(description="The chosen solution, one step per line.")
    steps: list[str]
    winner: str = Field(description="Which candidate won: draft, global, local or sample_k.")
    sorm_step_scores: list[float] | None = Field(
        description="The SORM's score of every draft step (null where the strategy does not "
        "consult the SORM)."
    )
    first_flagged_step: int | None
    decision: Decision
    reranker: str | None = Field(
        default=None,
        description="The reranker that picked the winner among several candidates: `orm` (the "
        "paper's) or the run's chosen one; null for a strategy that does not rerank.",
    )
    candidates: list[CandidateOut] = Field(
        description="Every candidate with its ORM and reranker scores."
    )
    votes: dict[str, int] | None = Field(
        default=None,
        description="self_consistency: how many samples stated each final answer (samples "
        "without one do not vote; ties go to the answer stated first); null otherwise.",
    )
    timings: dict[str, float] = Field(description="Seconds per stage, and in total.")
    usage: Usage
    warnings: list[WarningOut] = Field(
        default_factory=list,
        description="Signs that the question is beyond what the models were trained on, "
        "measured against the run's question profile (thresholds chosen on validation). They "
        "never change the answer; they say not to trust it. Empty when the run has no profile.",
    )

    @classmethod
    def from_solution(
        cls,
        solution: Solution,
        cfg: PipelineConfig,
        *,
        request_id: str,
        include_trace: bool,
        total_s: float,
        warnings: Sequence[QuestionWarning] = (),
    ) -> SolveResponse:
        winner = solution.winner.candidate
        draft = solution.draft
        sorm = draft.sorm if draft is not None else None
        local_target = (
            solution.plan.local_target
            if any(s.candidate.kind is CandidateKind.LOCAL for s in solution.candidates)
            else None
        )
        return cls(
            request_id=request_id,
            strategy=solution.strategy,
            answer=winner.answer,
            solution=winner.text,
            steps=list(winner.steps),
            winner=winner.label,
            sorm_step_scores=list(sorm.step_probs) if sorm is not None else None,
            first_flagged_step=solution.plan.first_flagged_step,
            decision=Decision(
                action=solution.plan.action,
                reason=solution.plan.reason,
                refine_mode=cfg.refine,
                orm_threshold=cfg.orm_threshold,
                sorm_threshold=cfg.sorm_threshold,
                local_when_unflagged=cfg.local_when_unflagged,
                first_flagged_step=solution.plan.first_flagged_step,
                local_target_step=local_target,
                dropped=[
                    DroppedOut(candidate=d.label, stage=d.stage.value, message=d.message)
                    for d in solution.dropped
                ],
            ),
            reranker=cfg.reranker.name
            if any(s.rank_score is not None for s in solution.candidates)
            else None,
            candidates=[_candidate(s, include_trace) for s in solution.candidates],
            votes=solution.votes,
            timings={**{k.value: v for k, v in solution.timings.items()}, "total": total_s},
            usage=Usage(
                completion_tokens=solution.total_tokens,
                by_role={k.value: v for k, v in solution.tokens.items()},
            ),
            warnings=[WarningOut(code=w.code.value, message=w.message) for w in warnings],
        )


def _candidate(scored: Scored, trace: bool) -> CandidateOut:
    c = scored.candidate
    return CandidateOut(
        label=c.label,
        kind=c.kind,
        # A solution with steps and no ORM reading was never shown to the ORM.
        orm_score=None if scored.orm is None and c.steps else scored.orm_score,
        rank_score=None
        if scored.rank_score is None or not math.isfinite(scored.rank_score)
        else round(scored.rank_score, 6),
        answer=c.answer,
        num_steps=len(c.steps),
        num_tokens=c.num_tokens,
        finish_reason=c.finish_reason,
        text=c.text if trace else None,
        orm_step_scores=list(scored.orm.step_probs) if trace and scored.orm else None,
        sorm_step_scores=list(scored.sorm.step_probs) if trace and scored.sorm else None,
    )


class StoredTrace(BaseModel):
    """A /solve kept for its trace link (settings `traces.keep`): the request as sent and the
    response as answered, include_trace's texts and step scores with it."""

    request_id: str
    stored_at: str = Field(description="When the answer went out (UTC, ISO 8601).")
    request: SolveRequest
    response: SolveResponse


class PageOptions(BaseModel):
    """What the web page (/ui) draws its form from. Public, as /ready's defaults are: names and
    numbers only, nothing a key would guard."""

    strategies: list[StrategyName] = Field(
        description="Every strategy, in the order the compare view runs them."
    )
    refine_modes: list[RefineMode]
    local_when_unflagged: list[LocalWhenUnflagged]
    defaults: dict[str, str | float | int] = Field(
        description="What a request gets when it does not say (thresholds as /ready gives them)."
    )
    limits: dict[str, int] = Field(description="max_n, max_new_tokens and max_question_chars.")
    auth: bool = Field(description="Whether every API route needs a bearer key.")
    traces_kept: int = Field(description="How many solve traces the server keeps (0: none).")

    @classmethod
    def of(cls, settings: Settings) -> PageOptions:
        d, limits = settings.defaults, settings.limits
        return cls(
            strategies=list(StrategyName),
            refine_modes=list(RefineMode),
            local_when_unflagged=list(LocalWhenUnflagged),
            defaults={
                "strategy": d.strategy.value,
                "refine": d.refine.value,
                "orm_threshold": d.orm_threshold,
                "sorm_threshold": d.sorm_threshold,
                "local_when_unflagged": d.local_when_unflagged.value,
                "n": d.n,
                "max_new_tokens": d.max_new_tokens,
            },
            limits={
                "max_n": limits.max_n,
                "max_new_tokens": limits.max_new_tokens,
                "max_question_chars": limits.max_question_chars,
            },
            auth=bool(settings.api_keys),
            traces_kept=settings.traces.keep,
        )


# ---------------------------------------------------------------- OpenAI-compatible chat


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content if p.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(
        default=False,
        description="Send a last chunk with `usage` (and no choices); the others carry "
        "`usage: null`.",
    )


class ChatCompletionRequest(Knobs):
    """OpenAI's chat completion request. The last user message is the question; the strategy
    and knobs come as extra fields (`extra_body` in the openai client). Unknown OpenAI fields
    are accepted and ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "glore",
                    "messages": [{"role": "user", "content": _SOLVE_EXAMPLE["question"]}],
                    "max_tokens": 128,
                    "strategy": "best_of_n",
                    "num_samples": 4,
                }
            ]
        },
    )

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, description="Choices to return; only 1 is supported.")
    stream: bool = Field(
        default=False,
        description="Answer with server-sent events in OpenAI's chunk format: the pipeline "
        "runs first, then the chosen solution streams step by step, a final chunk carries "
        "finish_reason (and the full /solve response as `glore`), then `data: [DONE]`.",
    )
    stream_options: StreamOptions | None = Field(
        default=None, description="With stream: include_usage adds a usage chunk before [DONE]."
    )
    num_samples: int | None = Field(
        default=None, ge=1, description="best_of_n's and self_consistency's n."
    )


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: FinishReason
    logprobs: Any = None


class ChatUsage(BaseModel):
    prompt_tokens: int = Field(
        description="Not counted: the engines report generated tokens only; always 0."
    )
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    warnings: list[WarningOut] = Field(
        default_factory=list,
        description="glore's extra field: the /solve response's `warnings` (signs that the "
        "question is beyond the models; the answer is unchanged by them).",
    )
    glore: SolveResponse = Field(description="The full /solve response behind this answer.")


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=_absent)
    content: str | None = Field(default=None, exclude_if=_absent)


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: Any = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (OpenAI's chunk format)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: ChatUsage | None = None
    glore: SolveResponse | None = Field(
        default=None,
        exclude_if=_absent,
        description="On the chunk with finish_reason: the full /solve response.",
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "glore"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class RoleStatus(BaseModel):
    healthy: bool
    detail: str = ""


class ThresholdDefault(BaseModel):
    value: float
    source: DefaultSource = Field(
        description="settings (GLORE_DEFAULTS__*), run (RUN_DIR/serving.json, chosen on "
        "validation by a test-split `glore eval`) or built-in."
    )


class Ready(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "roles": {
                        role: {"healthy": True, "detail": ""}
                        for role in ("policy", "orm", "sorm", "refine_global", "refine_local")
                    },
                    "defaults": {
                        "sorm_threshold": {"value": 0.42, "source": "run"},
                        "orm_threshold": {"value": 0.5, "source": "settings"},
                    },
                }
            ]
        }
    )

    status: Literal["ready"] = "ready"
    roles: dict[str, RoleStatus]
    defaults: dict[str, ThresholdDefault] = Field(
        default_factory=dict, description="The thresholds a request gets when it sets none."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Configuration an operator should fix, e.g. listening beyond loopback "
        "without API keys (also logged at startup; glore_insecure is 1 then).",
    )


class Killed(BaseModel):
    """Fault injection's answer: the roles whose engine was killed."""

    roles: list[str]
