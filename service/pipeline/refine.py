"""Stage 4: the global and local refiners rewrite the draft, concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Coroutine
from typing import Any

from engines.base import Generator, Role
from engines.text import global_refine_prompt, local_refine_prompt
from service.pipeline.draft import sampling, to_candidate
from service.pipeline.types import Action, Candidate, CandidateKind, Engines, PipelineConfig, Plan


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


async def refine(
    question: str,
    draft: Candidate,
    plan: Plan,
    engines: Engines,
    cfg: PipelineConfig,
    kinds: Collection[CandidateKind] = (CandidateKind.GLOBAL, CandidateKind.LOCAL),
) -> list[Candidate]:
    """The refinements the plan calls for, generated concurrently (global first in the result).

    Local refinement needs a step to mark, so it is skipped for a draft without steps.
    """
    if plan.action is not Action.REFINE:
        return []
    jobs: list[Coroutine[Any, Any, Candidate]] = []
    if CandidateKind.GLOBAL in kinds:
        jobs.append(refine_global(question, draft, engines.refine_global, cfg))
    if CandidateKind.LOCAL in kinds and plan.local_target is not None:
        jobs.append(refine_local(question, draft, plan.local_target, engines.refine_local, cfg))
    return list(await asyncio.gather(*jobs))
