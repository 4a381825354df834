"""Stage 4: the global and local refiners rewrite the draft, concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any

from engines.base import ContextLengthError, Generator, Role
from engines.text import global_refine_prompt, local_refine_prompt
from service.pipeline.draft import sampling, to_candidate
from service.pipeline.types import (
    Action,
    Candidate,
    CandidateKind,
    Dropped,
    Engines,
    PipelineConfig,
    Plan,
    Stage,
)


async def refine_global(
    question: str, draft: Candidate, refiner: Generator, cfg: PipelineConfig
) -> Candidate:
    """A whole new solution, written with the draft in view."""
    [[completion]] = await refiner.generate(
        [global_refine_prompt(question, draft.text)], sampling(cfg)
    )
    return to_candidate(completion, CandidateKind.GLOBAL, Role.REFINE_GLOBAL)


async def refine_local(
    question: str, draft: Candidate, bad_index: int, refiner: Generator, cfg: PipelineConfig
) -> Candidate:
    """The draft's good prefix kept verbatim, continued from the step marked bad."""
    local = local_refine_prompt(question, draft.text, bad_index)
    [[completion]] = await refiner.generate([local.prompt], sampling(cfg))
    return to_candidate(
        completion, CandidateKind.LOCAL, Role.REFINE_LOCAL, text=local.solution(completion.text)
    )


async def _or_dropped(
    kind: CandidateKind, job: Coroutine[Any, Any, Candidate]
) -> Candidate | Dropped:
    try:
        return await job
    except ContextLengthError as exc:
        return Dropped(kind, kind.value, Stage.REFINE, str(exc))


async def refine(
    question: str,
    draft: Candidate,
    plan: Plan,
    engines: Engines,
    cfg: PipelineConfig,
    kinds: Collection[CandidateKind] = (CandidateKind.GLOBAL, CandidateKind.LOCAL),
) -> tuple[list[Candidate], list[Dropped]]:
    """The refinements the plan calls for, generated concurrently (global first in the result),
    and those dropped because their prompt does not fit the refiner's context.

    Local refinement needs a step to mark, so it is skipped for a draft without steps.
    """
    if plan.action is not Action.REFINE:
        return [], []
    jobs: list[Coroutine[Any, Any, Candidate | Dropped]] = []
    if CandidateKind.GLOBAL in kinds:
        job = refine_global(question, draft, engines.refine_global, cfg)
        jobs.append(_or_dropped(CandidateKind.GLOBAL, job))
    if CandidateKind.LOCAL in kinds and plan.local_target is not None:
        job = refine_local(question, draft, plan.local_target, engines.refine_local, cfg)
        jobs.append(_or_dropped(CandidateKind.LOCAL, job))
    done = await asyncio.gather(*jobs)
    return (
        [c for c in done if isinstance(c, Candidate)],
        [d for d in done if isinstance(d, Dropped)],
    )
