"""Stage 2: the ORM and the SORM read every step of every candidate, one call per model."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from engines.base import ContextLengthError, Scorer, ScoreRequest, StepScores
from service.pipeline.types import Candidate, Dropped, Scored, Stage

R = TypeVar("R")
T = TypeVar("T")


async def read_each(
    read: Callable[[list[R]], Awaitable[Sequence[T]]], requests: list[R]
) -> Sequence[T | ContextLengthError]:
    """`read` (a model's batched call) on `requests`: each one's result, or the engine's
    ContextLengthError for one whose input does not fit."""
    try:
        return await read(requests)
    except ContextLengthError:
        # One of them does not fit: ask again one by one, so the others still get read (the
        # engine's micro-batcher merges the calls into one forward pass again).
        return await asyncio.gather(*(_read_one(read, r) for r in requests))


async def _read_one(
    read: Callable[[list[R]], Awaitable[Sequence[T]]], request: R
) -> T | ContextLengthError:
    try:
        [result] = await read([request])
    except ContextLengthError as exc:
        return exc
    return result


async def _score_all(
    question: str, candidates: Sequence[Candidate], scorer: Scorer
) -> list[StepScores | ContextLengthError | None]:
    """Each candidate's reading; None for one without steps (it states nothing a reward model
    could read), the engine's ContextLengthError for one whose input does not fit."""
    todo = [i for i, c in enumerate(candidates) if c.steps]
    requests = [ScoreRequest(question, candidates[i].steps) for i in todo]
    out: list[StepScores | ContextLengthError | None] = [None] * len(candidates)
    if not requests:
        return out
    for i, result in zip(todo, await read_each(scorer.score, requests), strict=True):
        out[i] = result
    return out


def _reading(result: StepScores | ContextLengthError | None) -> StepScores | None:
    return result if isinstance(result, StepScores) else None


def _too_long(*results: StepScores | ContextLengthError | None) -> str | None:
    return next((str(r) for r in results if isinstance(r, ContextLengthError)), None)


async def score(
    question: str,
    candidates: Sequence[Candidate],
    orm: Scorer,
    sorm: Scorer | None = None,
) -> list[Scored]:
    """ORM (and, when given, SORM) readings of every candidate; the two models run concurrently.
    A candidate a model cannot read (too long for its context) has `too_long` set."""
    if sorm is None:
        orm_scores = await _score_all(question, candidates, orm)
        return [
            Scored(c, _reading(o), too_long=_too_long(o))
            for c, o in zip(candidates, orm_scores, strict=True)
        ]
    orm_scores, sorm_scores = await asyncio.gather(
        _score_all(question, candidates, orm), _score_all(question, candidates, sorm)
    )
    return [
        Scored(c, _reading(o), _reading(s), too_long=_too_long(o, s))
        for c, o, s in zip(candidates, orm_scores, sorm_scores, strict=True)
    ]


def drop_too_long(scored: Sequence[Scored], stage: Stage) -> tuple[list[Scored], list[Dropped]]:
    """The candidates every model could read, and the others as dropped (at `stage`)."""
    kept = [s for s in scored if s.too_long is None]
    dropped = [
        Dropped(s.candidate.kind, s.candidate.label, stage, s.too_long)
        for s in scored
        if s.too_long is not None
    ]
    return kept, dropped


def unscored(scored: Scored) -> Scored:
    """A candidate kept although a model could not read it: no readings at all, ranked last."""
    return replace(
        scored, orm=None, sorm=None, logprobs=None, rank_score=-math.inf, too_long=None, unread=True
    )
