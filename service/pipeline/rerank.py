"""Stage 5: the reranker picks the winner among the candidates.

The paper's reranker is the ORM. A run may choose another on its dev set (engines.reranker),
e.g. one that also weighs the policy's own token log-probabilities of each candidate: those are
read here, in one batched call to the policy, only when the reranker needs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from engines.base import Generator, LikelihoodRequest, Scorer
from engines.reranker import ORM_RERANKER, Reranker
from engines.text import join_steps, policy_prompt
from service.pipeline.score import score
from service.pipeline.types import Candidate, Scored


async def rank(
    question: str, scored: Sequence[Scored], policy: Generator, reranker: Reranker
) -> list[Scored]:
    """Every candidate with its reranker score (policy log-probabilities read if needed)."""
    todo = [
        i
        for i, s in enumerate(scored)
        if reranker.needs_logprobs and s.candidate.steps and s.logprobs is None
    ]
    out = list(scored)
    if todo:
        prompt = policy_prompt(question)
        requests = [LikelihoodRequest(prompt, join_steps(scored[i].candidate.steps)) for i in todo]
        for i, read in zip(todo, await policy.logprobs(requests), strict=True):
            out[i] = replace(out[i], logprobs=read)
    return [replace(s, rank_score=reranker.score(s.readings)) for s in out]


def _rank_key(s: Scored) -> float:
    value = s.rank_score if s.rank_score is not None else ORM_RERANKER.score(s.readings)
    return -math.inf if math.isnan(value) else value


def pick(scored: Sequence[Scored]) -> Scored:
    """The candidate ranked highest; ties go to the earlier one (the draft first), so a
    refinement must be judged strictly better to replace it. Unranked candidates are ordered by
    their ORM score."""
    if not scored:
        raise ValueError("nothing to rerank")
    return max(enumerate(scored), key=lambda item: (_rank_key(item[1]), -item[0]))[1]


async def rerank(
    question: str,
    scored: Sequence[Scored],
    new: Sequence[Candidate],
    orm: Scorer,
    policy: Generator,
    reranker: Reranker = ORM_RERANKER,
) -> tuple[Scored, list[Scored]]:
    """Score the `new` candidates with the ORM (one call), rank all of them, pick the best."""
    everything = await rank(
        question, [*scored, *(await score(question, new, orm))], policy, reranker
    )
    return pick(everything), everything
