"""Evaluation metrics: step-level error detection, refine decisions, fix/break rates, bootstrap.

Pure functions over plain lists, so each number in a report can be pinned by a hand-built test
(ROC-AUC and thresholded accuracy live in training.metrics, shared with training). A step label
is True when the solution is still on track after that step (the prefix can still reach the
right answer): the exact `prefix_ok` of the task's checker, or a V* label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def first_below(scores: Sequence[float], threshold: float) -> int | None:
    """Index of the first step whose score is below `threshold` (a predicted first error)."""
    return next((i for i, s in enumerate(scores) if s < threshold), None)


def first_false(labels: Sequence[bool]) -> int | None:
    """Index of the first step labelled off track (the true first error)."""
    return next((i for i, ok in enumerate(labels) if not ok), None)


def _check_aligned(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]]) -> None:
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score lists for {len(labels)} label lists")
    for i, (s, y) in enumerate(zip(scores, labels, strict=True)):
        if len(s) != len(y):
            raise ValueError(f"solution {i}: {len(s)} step scores for {len(y)} step labels")


def step_accuracy(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]], threshold: float = 0.5
) -> float:
    """Share of all steps (pooled over solutions) whose thresholded score matches its label."""
    _check_aligned(scores, labels)
    hits = total = 0
    for s, y in zip(scores, labels, strict=True):
        for score, ok in zip(s, y, strict=True):
            hits += (score >= threshold) == ok
            total += 1
    if total == 0:
        raise ValueError("no steps to score")
    return hits / total


def step_accuracy_by_index(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]], threshold: float = 0.5
) -> list[tuple[int, float, int]]:
    """(step index, accuracy, count) for every step index that occurs."""
    _check_aligned(scores, labels)
    hits: dict[int, int] = {}
    counts: dict[int, int] = {}
    for s, y in zip(scores, labels, strict=True):
        for i, (score, ok) in enumerate(zip(s, y, strict=True)):
            hits[i] = hits.get(i, 0) + ((score >= threshold) == ok)
            counts[i] = counts.get(i, 0) + 1
    return [(i, hits[i] / counts[i], counts[i]) for i in sorted(counts)]


def first_error_accuracy(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]], threshold: float = 0.5
) -> float:
    """Share of solutions whose first step below threshold is exactly the first wrong step.

    A solution with no wrong step counts as a hit when no step is flagged either.
    """
    _check_aligned(scores, labels)
    if not scores:
        raise ValueError("no solutions")
    hits = sum(
        first_below(s, threshold) == first_false(y) for s, y in zip(scores, labels, strict=True)
    )
    return hits / len(scores)


def best_threshold(
    scores: Sequence[Sequence[float]],
    labels: Sequence[Sequence[bool]],
    grid: Sequence[float] | None = None,
) -> float:
    """The threshold with the highest step accuracy (ties: the one closest to 0.5)."""
    candidates = list(grid) if grid is not None else [i / 100 for i in range(1, 100)]
    return max(candidates, key=lambda t: (step_accuracy(scores, labels, t), -abs(t - 0.5)))


@dataclass(frozen=True)
class PRPoint:
    threshold: float
    precision: float
    recall: float
    flagged: int


def flag_incorrect_pr_curve(
    orm_scores: Sequence[float], correct: Sequence[bool], thresholds: Sequence[float]
) -> list[PRPoint]:
    """Precision and recall of "refine this draft" (ORM score < threshold) at finding wrong ones.

    Precision with nothing flagged is taken as 1 (no false alarms), the usual convention.
    """
    wrong_total = sum(not c for c in correct)
    points = []
    for t in thresholds:
        flagged = [not c for s, c in zip(orm_scores, correct, strict=True) if s < t]
        tp = sum(flagged)
        precision = tp / len(flagged) if flagged else 1.0
        recall = tp / wrong_total if wrong_total else 0.0
        points.append(PRPoint(t, precision, recall, len(flagged)))
    return points


@dataclass(frozen=True)
class FixBreak:
    """How a method changes outcomes relative to the draft."""

    fix_rate: float | None  # wrong draft -> right; None when no draft was wrong
    break_rate: float | None  # right draft -> wrong; None when no draft was right
    fixed: int
    broken: int
    wrong_drafts: int
    right_drafts: int


def fix_break(draft_correct: Sequence[bool], after_correct: Sequence[bool]) -> FixBreak:
    if len(draft_correct) != len(after_correct):
        raise ValueError("draft and refined outcomes must be of one length")
    pairs = list(zip(draft_correct, after_correct, strict=True))
    wrong = sum(not d for d, _ in pairs)
    right = len(pairs) - wrong
    fixed = sum(not d and a for d, a in pairs)
    broken = sum(d and not a for d, a in pairs)
    return FixBreak(
        fix_rate=fixed / wrong if wrong else None,
        break_rate=broken / right if right else None,
        fixed=fixed,
        broken=broken,
        wrong_drafts=wrong,
        right_drafts=right,
    )


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (95% by default)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (n_boot, n)
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """A paired difference between two methods on the same questions, resampled by question."""

    difference: float  # a minus b
    p_value: float  # two-sided: that the difference is not zero
    ci95: tuple[float, float]
    questions: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "difference": self.difference,
            "p_value": self.p_value,
            "ci95": list(self.ci95),
            "questions": self.questions,
            "sided": "two-sided",
        }


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """mean(a) - mean(b) over questions, with a p-value and a 95% CI from resampling questions.

    One entry per question, paired. With `weights`, each entry is a question's total (e.g. its
    steps judged right) and its weight the question's count (its steps): the statistic is then
    sum(a - b) / sum(weights), a pooled rate whose resampling keeps all of a question's units
    together, since units of one question are not independent. The p-value shifts the
    bootstrap distribution to the null (Koehn, 2004; Berg-Kirkpatrick et al., 2012): how often
    the resampled difference lands at least as far from the observed one as the observed one is
    from zero; its smallest value is 1 / (n_boot + 1), never 0. The CI is the percentile one.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if x.shape != y.shape or x.shape != w.shape or x.size == 0:
        raise ValueError("paired samples (and weights) must be non-empty and of one length")
    if w.sum() <= 0:
        raise ValueError("weights must add up to more than zero")
    d = x - y
    observed = d.sum() / w.sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))  # (n_boot, questions)
    weight = w[idx].sum(axis=1)
    # A resample of only weightless questions (no units) has no rate; count it as no change.
    resampled = np.divide(d[idx].sum(axis=1), weight, out=np.zeros(n_boot), where=weight > 0)
    extreme = np.sum(np.abs(resampled - observed) >= abs(observed) - 1e-12)
    lo, hi = np.quantile(resampled, [0.025, 0.975])
    return Comparison(
        difference=float(observed),
        p_value=float((extreme + 1) / (n_boot + 1)),
        ci95=(float(lo), float(hi)),
        questions=int(d.size),
    )


def paired_bootstrap_pvalue(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0
) -> float:
    """Two-sided p-value that mean(a) and mean(b) differ, resampling questions in pairs."""
    return paired_bootstrap(a, b, n_boot=n_boot, seed=seed).p_value


def step_hits(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]], threshold: float
) -> list[float]:
    """Per solution, how many of its steps the thresholded score labels right (the numerators
    of step_accuracy, kept per question so a bootstrap can resample questions)."""
    _check_aligned(scores, labels)
    return [
        float(sum((score >= threshold) == ok for score, ok in zip(s, y, strict=True)))
        for s, y in zip(scores, labels, strict=True)
    ]


def first_error_hits(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]], threshold: float
) -> list[float]:
    """Per solution, 1 when its first step below threshold is its first wrong step, else 0."""
    _check_aligned(scores, labels)
    return [
        float(first_below(s, threshold) == first_false(y))
        for s, y in zip(scores, labels, strict=True)
    ]


@dataclass(frozen=True)
class PairwiseRanking:
    """How often a reranker puts a right candidate above a wrong one of the same question."""

    accuracy: float | None  # None when no question has both a right and a wrong candidate
    pairs: int
    questions: int  # questions with at least one (right, wrong) pair


def within_question_pairwise(
    scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]
) -> PairwiseRanking:
    """Pairwise ranking accuracy inside each question (ties count half).

    Across questions an ORM can look good by learning which questions are hard; a reranker only
    ever compares candidates of one question, so this is the number that decides reranking.
    """
    _check_aligned(scores, correct)
    hits = 0.0
    pairs = questions = 0
    for s, y in zip(scores, correct, strict=True):
        right = [v for v, ok in zip(s, y, strict=True) if ok]
        wrong = [v for v, ok in zip(s, y, strict=True) if not ok]
        if right and wrong:
            questions += 1
        for r in right:
            for w in wrong:
                pairs += 1
                hits += 1.0 if r > w else 0.5 if r == w else 0.0
    return PairwiseRanking(hits / pairs if pairs else None, pairs, questions)
