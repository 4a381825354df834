"""Every reranker measured on the same candidates: within-question pairwise accuracy on GLoRe's
candidates and on best-of-3's samples, and the accuracy each would give those two methods.

Records keep every candidate's features (runner.RankedCandidate), so a reranker is measured
offline without running a model again; the run's chosen reranker and the paper's ORM are rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from engines.reranker import Reranker
from training.evaluation.metrics import within_question_pairwise
from training.evaluation.runner import RANKED_METHODS, QuestionRecord, RankedCandidate


def kind_of(label: str) -> str:
    """The writer of a candidate from its label: draft, global, local or sample (sample_k)."""
    return "sample" if label.startswith("sample") else label


def candidate_features(c: RankedCandidate) -> dict[str, float]:
    """A candidate's recorded features; who wrote it is also known from its label (records
    written before the kind features existed lack them)."""
    kind = kind_of(c.label)
    return {"kind_global": float(kind == "global"), "kind_local": float(kind == "local")} | (
        c.features
    )


def candidate_score(reranker: Reranker, c: RankedCandidate) -> float:
    if not c.features:
        return -math.inf
    features = candidate_features(c)
    return reranker.score_features([features[f] for f in reranker.features])


def pick(reranker: Reranker, candidates: Sequence[RankedCandidate]) -> RankedCandidate:
    """The service's rule (service.pipeline.rerank.pick): highest score, ties to the earlier."""
    scores = [candidate_score(reranker, c) for c in candidates]
    return candidates[max(range(len(candidates)), key=lambda i: (scores[i], -i))]


def measure(reranker: Reranker, records: Sequence[QuestionRecord], method: str) -> dict[str, Any]:
    """Pairwise accuracy on `method`'s candidates, and the accuracy its pick would give."""
    groups = [r.ranked[method] for r in records if r.ranked.get(method)]
    scores = [[candidate_score(reranker, c) for c in g] for g in groups]
    correct = [[c.correct for c in g] for g in groups]
    ranking = within_question_pairwise(scores, correct)
    picked = [pick(reranker, g).correct for g in groups]
    return {
        "pairwise": ranking.accuracy,
        "pairs": ranking.pairs,
        "questions_with_pairs": ranking.questions,
        "accuracy": sum(picked) / len(picked) if picked else None,
        "questions": len(picked),
    }


def reranker_table(
    records: Sequence[QuestionRecord], rerankers: Mapping[str, Reranker], default: str
) -> dict[str, Any]:
    """`how.rerankers`: one row per reranker, measured on every RANKED_METHODS' candidates."""
    rows = []
    for name, reranker in rerankers.items():
        rows.append(
            {
                "name": name,
                "description": reranker.description,
                "features": list(reranker.features),
                "default": name == default,
                **{method: measure(reranker, records, method) for method in RANKED_METHODS},
            }
        )
    return {"methods": list(RANKED_METHODS), "rows": rows}
