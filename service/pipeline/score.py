"""Stage 2: the ORM and the SORM read every step of every candidate, one call per model."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from engines.base import Scorer, ScoreRequest, StepScores
from service.pipeline.types import Candidate, Scored


async def _score_all(
    question: str, candidates: Sequence[Candidate], scorer: Scorer
) -> list[StepScores | None]:
    # A candidate without steps states nothing a reward model could read: it stays unscored.
    requests = [ScoreRequest(question, c.steps) for c in candidates if c.steps]
    results = iter(await scorer.score(requests)) if requests else iter(())
    return [next(results) if c.steps else None for c in candidates]


async def score(
    question: str,
    candidates: Sequence[Candidate],
    orm: Scorer,
    sorm: Scorer | None = None,
) -> list[Scored]:
    """ORM (and, when given, SORM) readings of every candidate; the two models run concurrently."""
    if sorm is None:
        orm_scores = await _score_all(question, candidates, orm)
        return [Scored(c, o) for c, o in zip(candidates, orm_scores, strict=True)]
    orm_scores, sorm_scores = await asyncio.gather(
        _score_all(question, candidates, orm), _score_all(question, candidates, sorm)
    )
    return [Scored(c, o, s) for c, o, s in zip(candidates, orm_scores, sorm_scores, strict=True)]
