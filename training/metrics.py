"""Evaluation figures computed the same way everywhere: ROC-AUC and friends."""

from __future__ import annotations

from collections.abc import Sequence

from scipy.stats import rankdata


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half).

    None when only one class is present, since the figure is then undefined.
    """
    if len(scores) != len(labels):
        raise ValueError(f"scores ({len(scores)}) and labels ({len(labels)}) differ in length")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks for ties
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy_at(scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.5) -> float:
    if not scores:
        return 0.0
    hits = sum((s >= threshold) == bool(y) for s, y in zip(scores, labels, strict=True))
    return hits / len(scores)
