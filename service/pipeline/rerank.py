"""Stage 5: the reranker picks the winner among the candidates.

The paper's reranker is the ORM. A run may choose another on its dev set (engines.reranker),
e.g. one that also weighs the policy's own token log-probabilities of each candidate: those are
read here, in one batched call to the policy, only when the reranker needs them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from engines.base import ContextLengthError, Generator, LikelihoodRequest, Scorer
from engines.reranker import ORM_RERANKER, Reranker
from engines.text import join_steps, policy_prompt
from service.pipeline.score import drop_too_long, read_each, score, unscored
from service.pipeline.types import Candidate, CandidateKind, Dropped, Scored, Stage


async def rank(
    question: str, scored: Sequence[Scored], policy: Generator, reranker: Reranker
) -> list[Scored]:
    """Every candidate with its reranker score (policy log-probabilities read if needed)."""
    todo = [
        i
        for i, s in enumerate(scored)
        if reranker.needs_logprobs and s.candidate.steps and s.logprobs is None and not s.unread
    ]
    out = list(scored)
    if todo:
        prompt = policy_prompt(question)
        requests = [LikelihoodRequest(prompt, join_steps(scored[i].candidate.steps)) for i in todo]
        for i, read in zip(todo, await read_each(policy.logprobs, requests), strict=True):
            if isinstance(read, ContextLengthError):
                out[i] = replace(out[i], too_long=str(read))
            else:
                out[i] = replace(out[i], logprobs=read)
    return [
        s
        if s.too_long is not None or s.unread
        else replace(s, rank_score=reranker.score(s.readings))
        for s in out
    ]


def keep_readable(scored: Sequence[Scored], stage: Stage) -> tuple[list[Scored], list[Dropped]]:
    """Drop the candidates a model could not read (`too_long`), at `stage`. The draft, the
    answer of last resort, is kept instead, unscored and ranked last; so is the first candidate
    when every one is unreadable and none is a draft (best-of-n's samples)."""
    unreadable = [s for s in scored if s.too_long is not None]
    keep = next((s for s in unreadable if s.candidate.kind is CandidateKind.DRAFT), None)
    if keep is None and len(unreadable) == len(scored) and scored:
        keep = scored[0]
    kept = [unscored(s) if s is keep else s for s in scored if s.too_long is None or s is keep]
    dropped = [
        Dropped(s.candidate.kind, s.candidate.label, stage, s.too_long)
        for s in unreadable
        if s is not keep and s.too_long is not None
    ]
    return kept, dropped


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
) -> tuple[Scored, list[Scored], list[Dropped]]:
    """Score the `new` candidates with the ORM (one call), rank all of them, pick the best.
    Candidates a model cannot read (too long for its context) are dropped; the draft stays,
    ranked last."""
    fresh, dropped = drop_too_long(await score(question, new, orm), Stage.SCORE)
    everything, unread = keep_readable(
        await rank(question, [*scored, *fresh], policy, reranker), Stage.RERANK
    )
    return pick(everything), everything, [*dropped, *unread]
