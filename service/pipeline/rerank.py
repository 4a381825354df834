"""Stage 5: the ORM picks the winner among the candidates."""

from __future__ import annotations

from collections.abc import Sequence

from engines.base import Scorer
from service.pipeline.score import score
from service.pipeline.types import Candidate, Scored


def pick(scored: Sequence[Scored]) -> Scored:
    """The candidate with the highest ORM score; ties go to the earlier one (the draft first),
    so a refinement must be judged strictly better to replace it."""
    if not scored:
        raise ValueError("nothing to rerank")
    return max(enumerate(scored), key=lambda item: (item[1].orm_score, -item[0]))[1]


async def rerank(
    question: str, scored: Sequence[Scored], new: Sequence[Candidate], orm: Scorer
) -> tuple[Scored, list[Scored]]:
    """Score the `new` candidates with the ORM (one call) and pick among all of them."""
    everything = [*scored, *(await score(question, new, orm))]
    return pick(everything), everything
