"""Typed fakes of the engine protocols (engines.base), for unit tests of pipeline and app logic.

They follow the protocols exactly (async, batched, n completions per prompt, cancellable), record
every call, and can be held at a gate, so tests can observe concurrency and cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engines.base import (
    Completion,
    EngineHealth,
    Generator,
    LikelihoodRequest,
    Role,
    SamplingParams,
    Scorer,
    ScoreRequest,
    StepScores,
    TokenLogprobs,
)

# prompt, sample index -> completion text
Respond = Callable[[str, int], str]
# question, steps -> one probability per step
ScoreFn = Callable[[str, tuple[str, ...]], Sequence[float]]


def constant(text: str) -> Respond:
    return lambda prompt, index: text


@dataclass
class FakeGenerator:
    """A Generator that answers with `respond(prompt, sample_index)`.

    `delay_s` sleeps before answering; `gate`, when set, holds every call until it is set.
    `started` is set once a call is in progress; `cancelled` counts calls cancelled midway.
    """

    name: str
    respond: Respond
    delay_s: float = 0.0
    gate: asyncio.Event | None = None
    healthy: bool = True
    calls: list[tuple[list[str], SamplingParams]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: int = 0
    closed: bool = False
    read_calls: list[list[LikelihoodRequest]] = field(default_factory=list)

    def health(self) -> EngineHealth:
        return EngineHealth(self.healthy, "" if self.healthy else "fake engine marked dead")

    async def close(self) -> None:
        self.closed = True

    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        self.calls.append((list(prompts), params))
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        out: list[list[Completion]] = []
        for prompt in prompts:
            texts = [self.respond(prompt, i) for i in range(params.n)]
            out.append([Completion(t, max(1, len(t.split())), "stop") for t in texts])
        return out

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        """One log-probability per word of the completion (and one for EOS): -1 for a word
        this generator would write itself at that position, -5 for any other, so a fake
        policy "prefers" its own answers."""
        self.read_calls.append(list(requests))
        out = []
        for r in requests:
            own = self.respond(r.prompt, 0).split()
            words = r.completion.split()
            lps = [-1.0 if j < len(own) and own[j] == w else -5.0 for j, w in enumerate(words)]
            out.append(TokenLogprobs((*lps, -1.0)))
        return out


@dataclass
class FakeScorer:
    """A Scorer whose step probabilities come from `score_fn(question, steps)`."""

    name: str
    score_fn: ScoreFn
    delay_s: float = 0.0
    healthy: bool = True
    calls: list[list[ScoreRequest]] = field(default_factory=list)
    closed: bool = False

    def health(self) -> EngineHealth:
        return EngineHealth(self.healthy, "" if self.healthy else "fake engine marked dead")

    async def close(self) -> None:
        self.closed = True

    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        self.calls.append(list(requests))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = []
        for r in requests:
            if not r.steps:
                raise ValueError("a solution to score needs at least one step")
            probs = tuple(float(p) for p in self.score_fn(r.question, r.steps))
            assert len(probs) == len(r.steps), "score_fn must give one probability per step"
            out.append(StepScores(probs))
        return out


def keyword_scorer(name: str, bad_word: str = "wrong", low: float = 0.1, high: float = 0.9):
    """A scorer that doubts every step from the first one containing `bad_word` on."""

    def score_fn(question: str, steps: tuple[str, ...]) -> list[float]:
        probs, doubted = [], False
        for step in steps:
            doubted = doubted or bad_word in step
            probs.append(low if doubted else high)
        return probs

    return FakeScorer(name, score_fn)


@dataclass
class FakeEngineSet:
    """The five roles, as engines.registry.EngineSet exposes them."""

    policy: Generator
    refine_global: Generator
    refine_local: Generator
    orm: Scorer
    sorm: Scorer
    closed: bool = False

    @property
    def roles(self) -> set[Role]:
        return set(Role)

    def generator(self, role: Role) -> Generator:
        return {
            Role.POLICY: self.policy,
            Role.REFINE_GLOBAL: self.refine_global,
            Role.REFINE_LOCAL: self.refine_local,
        }[role]

    def scorer(self, role: Role) -> Scorer:
        return {Role.ORM: self.orm, Role.SORM: self.sorm}[role]

    def health(self) -> dict[Role, EngineHealth]:
        engines: dict[Role, Generator | Scorer] = {
            Role.POLICY: self.policy,
            Role.ORM: self.orm,
            Role.SORM: self.sorm,
            Role.REFINE_GLOBAL: self.refine_global,
            Role.REFINE_LOCAL: self.refine_local,
        }
        return {role: engine.health() for role, engine in engines.items()}

    async def close(self) -> None:
        self.closed = True


WRONG_DRAFT = "2 + 3 = 5\n5 * 4 = 21 wrong\nThe answer is 21."
RIGHT_GLOBAL = "2 + 3 = 5\n5 * 4 = 20\nThe answer is 20."
LOCAL_CONTINUATION = "5 * 4 = 20\nThe answer is 20."


def make_engines(
    draft: str = WRONG_DRAFT,
    global_text: str = RIGHT_GLOBAL,
    local_text: str = LOCAL_CONTINUATION,
    *,
    policy_delay_s: float = 0.0,
) -> FakeEngineSet:
    """Engines with a policy that writes `draft`, refiners that write the given texts, and an
    ORM and a SORM that doubt any step containing "wrong"."""
    return FakeEngineSet(
        policy=FakeGenerator("policy", constant(draft), delay_s=policy_delay_s),
        refine_global=FakeGenerator("refine_global", constant(global_text)),
        refine_local=FakeGenerator("refine_local", constant(local_text)),
        orm=keyword_scorer("orm"),
        sorm=keyword_scorer("sorm"),
    )
