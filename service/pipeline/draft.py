"""Stage 1: the policy writes a draft (greedy) or n samples (best-of-n)."""

from __future__ import annotations

from engines.base import Completion, Generator, Role, SamplingParams
from engines.text import extract_answer, policy_prompt, split_steps
from service.pipeline.types import Candidate, CandidateKind, PipelineConfig


def to_candidate(
    completion: Completion,
    kind: CandidateKind,
    role: Role,
    *,
    text: str | None = None,
    index: int = 0,
) -> Candidate:
    """A completion read through the text contract. `text` overrides the completion's text
    (the local refiner's output is its kept prefix plus the completion)."""
    full = completion.text if text is None else text
    steps = tuple(split_steps(full))
    return Candidate(
        kind=kind,
        text="\n".join(steps),
        steps=steps,
        answer=extract_answer(full),
        num_tokens=completion.num_tokens,
        finish_reason=completion.finish_reason,
        role=role,
        index=index,
    )


def sampling(
    cfg: PipelineConfig, *, n: int = 1, default_temperature: float = 0.0
) -> SamplingParams:
    temperature = default_temperature if cfg.temperature is None else cfg.temperature
    return SamplingParams(
        n=n,
        temperature=temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
    )


async def draft_solution(question: str, policy: Generator, cfg: PipelineConfig) -> Candidate:
    """The policy's greedy draft (the paper drafts greedily; `cfg.temperature` overrides)."""
    [[completion]] = await policy.generate([policy_prompt(question)], sampling(cfg))
    return to_candidate(completion, CandidateKind.DRAFT, Role.POLICY)


async def sample_solutions(
    question: str, policy: Generator, cfg: PipelineConfig
) -> list[Candidate]:
    """n sampled solutions for best-of-n, at `cfg.sample_temperature` unless overridden."""
    params = sampling(cfg, n=cfg.n, default_temperature=cfg.sample_temperature)
    [completions] = await policy.generate([policy_prompt(question)], params)
    return [
        to_candidate(c, CandidateKind.SAMPLE, Role.POLICY, index=i)
        for i, c in enumerate(completions)
    ]
