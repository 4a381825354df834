"""Protocols for the models behind glore: roles, generation, step/outcome scoring, health.

Everything above `engines/` (service, training) talks to models only through these types, so the
transformers and vLLM backends are interchangeable and a typed fake can stand in for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable


class Role(StrEnum):
    """The five models of GLoRe. Used for settings, metric labels, run directories and recipes."""

    POLICY = "policy"
    ORM = "orm"
    SORM = "sorm"
    REFINE_GLOBAL = "refine_global"
    REFINE_LOCAL = "refine_local"

    @property
    def is_scorer(self) -> bool:
        return self in (Role.ORM, Role.SORM)


class Backend(StrEnum):
    """The backends glore ships, by name; engines.backends.BACKENDS holds what each one is."""

    HF = "hf"
    VLLM = "vllm"
    REMOTE = "remote"


FinishReason = Literal["stop", "length"]

# The largest seed every backend takes: torch's generators take a signed or unsigned 64-bit
# seed and vLLM hands its seed to a torch generator, so a signed 64-bit int fits both.
MAX_SEED = 2**63 - 1
# Below this a temperature is greedy (vLLM's own cut-off, _SAMPLING_EPS): dividing logits by a
# schema-valid 1e-300 overflows them to inf and sampling fails.
SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy; `seed` makes sampling reproducible."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed must be in 0..{MAX_SEED}", field="seed")


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt (the prompt itself is not included)."""

    text: str
    num_tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class ScoreRequest:
    """A solution to score: the question and the solution's steps (see engines.text)."""

    question: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class StepScores:
    """A reward model's reading of one solution.

    step_probs[i] is P(correct | steps[: i + 1]) read at the i-th step tag; outcome_prob is the
    reading at the last step tag (the ORM's answer to "is this solution right?").
    """

    step_probs: tuple[float, ...]

    @property
    def outcome_prob(self) -> float:
        return self.step_probs[-1]


@dataclass(frozen=True)
class LikelihoodRequest:
    """A completion for a causal LM to read, not write: `prompt`, then `completion` (+ EOS)."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class TokenLogprobs:
    """log p(token | everything before it) for each completion token, the closing EOS included.

    What a likelihood-based verifier reads: a wrong step usually holds a token (often the result
    of `a op b`) that the model's own next-token distribution finds unlikely.
    """

    logprobs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0

    @property
    def min(self) -> float:
        return min(self.logprobs) if self.logprobs else 0.0


@dataclass(frozen=True)
class EngineHealth:
    healthy: bool
    detail: str = ""


@runtime_checkable
class Engine(Protocol):
    """What every loaded model offers, whatever it does."""

    name: str

    def health(self) -> EngineHealth: ...

    async def close(self) -> None: ...


@runtime_checkable
class Generator(Engine, Protocol):
    """A causal LM: the policy and the refiners."""

    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        """n completions per prompt, in prompt order. Cancelling the awaiting task stops work."""
        ...

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        """Each completion's token log-probabilities given its prompt, one forward pass each
        (batched together); nothing is sampled."""
        ...


@runtime_checkable
class Scorer(Engine, Protocol):
    """A reward model (ORM or SORM): every step of a solution scored in one forward pass."""

    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        """One StepScores per request, in order; requests are batched together."""
        ...


# The paper speaks of a step scorer (SORM) and an outcome scorer (ORM); both read the same
# per-step-tag head, so one protocol serves both and the names stay as aliases for its readers.
StepScorer = Scorer
OutcomeScorer = Scorer


class ByRole:
    """The five roles' engines as properties (the pipeline's `Engines`), for a class that says
    which `generator` and which `scorer` serves a role."""

    def generator(self, role: Role) -> Generator:
        raise NotImplementedError

    def scorer(self, role: Role) -> Scorer:
        raise NotImplementedError

    @property
    def policy(self) -> Generator:
        return self.generator(Role.POLICY)

    @property
    def refine_global(self) -> Generator:
        return self.generator(Role.REFINE_GLOBAL)

    @property
    def refine_local(self) -> Generator:
        return self.generator(Role.REFINE_LOCAL)

    @property
    def orm(self) -> Scorer:
        return self.scorer(Role.ORM)

    @property
    def sorm(self) -> Scorer:
        return self.scorer(Role.SORM)


class EngineError(RuntimeError):
    """A model could not serve a call (dead process, out of memory, bad checkpoint, ...)."""

    def __init__(self, message: str, *, role: str | None = None, path: str | None = None):
        self.role = role
        self.path = path
        where = ", ".join(f"{k}={v}" for k, v in (("role", role), ("path", path)) if v)
        super().__init__(f"{message} ({where})" if where else message)


class InputError(ValueError):
    """A request a model cannot take because of its own input (a prompt longer than the
    context, an out-of-range seed, ...). Its message is ours and safe to show; `field` names
    what the caller should change (prompt, seed, max_new_tokens, ...)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class ContextLengthError(InputError):
    """An input longer than the model's context. An InputError (the request is at fault), and its
    own type, so the pipeline can drop the one candidate that does not fit and go on."""


class EngineLoadError(EngineError):
    """A checkpoint failed to load. The message names the role and the path."""


@dataclass
class EngineSpec:
    """Where a role's model lives and which backend serves it."""

    path: str
    # A name in engines.backends.BACKENDS (Backend names the shipped ones).
    backend: str = Backend.HF
    # Backend options (device, dtype, max_batch_size, tensor_parallel_size, ...), validated by
    # the backend's options model (HFOptions, VLLMOptions, ...).
    options: dict[str, object] = field(default_factory=dict)
