"""The evaluation's metric code, pinned on hand-built cases with exact expected values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.evaluation.metrics import (
    best_threshold,
    bootstrap_ci,
    first_below,
    first_error_accuracy,
    first_error_hits,
    first_false,
    fix_break,
    flag_incorrect_pr_curve,
    paired_bootstrap,
    paired_bootstrap_pvalue,
    step_accuracy,
    step_accuracy_by_index,
    step_hits,
    within_question_pairwise,
)
from training.metrics import accuracy_at, roc_auc

# Three solutions. Labels: still on track after each step.
SCORES = [[0.9, 0.8, 0.2], [0.7, 0.4], [0.6, 0.6, 0.6, 0.3]]
LABELS = [[True, True, False], [True, True], [True, False, False, False]]


def test_step_accuracy_pools_every_step_of_every_solution() -> None:
    # hits: sol0 3/3, sol1 1/2 (0.4 says bad, label good), sol2 2/4 (steps 1,2 say good) -> 6/9
    assert step_accuracy(SCORES, LABELS, 0.5) == pytest.approx(6 / 9)
    # threshold 0.65: sol0 3/3, sol1 2/2? 0.7 good, 0.4 bad->miss => 1/2; sol2 0.6<0.65 bad: step0
    # miss, 1-3 hit -> 3/4. total 7/9
    assert step_accuracy(SCORES, LABELS, 0.65) == pytest.approx(7 / 9)


def test_step_accuracy_by_index_counts_each_position() -> None:
    assert step_accuracy_by_index(SCORES, LABELS, 0.5) == [
        (0, 1.0, 3),
        (1, 1 / 3, 3),
        (2, 0.5, 2),
        (3, 1.0, 1),
    ]


def test_first_error_location_is_exact_or_a_miss() -> None:
    assert first_below([0.9, 0.4, 0.1], 0.5) == 1
    assert first_below([0.9, 0.9], 0.5) is None
    assert first_false([True, False, False]) == 1
    assert first_false([True, True]) is None
    # sol0: flag 2, truth 2 hit; sol1: flag 1, truth None miss; sol2: flag 3, truth 1 miss
    assert first_error_accuracy(SCORES, LABELS, 0.5) == pytest.approx(1 / 3)
    # at 0.65: sol0 2==2 hit; sol1 1 vs None miss; sol2 0 vs 1 miss
    assert first_error_accuracy(SCORES, LABELS, 0.65) == pytest.approx(1 / 3)
    # at 0.35: sol0 hit; sol1 None==None hit; sol2 flag 3 vs 1 miss
    assert first_error_accuracy(SCORES, LABELS, 0.35) == pytest.approx(2 / 3)


def test_misaligned_scores_and_labels_are_refused_naming_the_solution() -> None:
    with pytest.raises(ValueError, match="solution 1"):
        step_accuracy([[0.1], [0.2, 0.3]], [[True], [True]])


def test_best_threshold_maximises_step_accuracy_and_breaks_ties_towards_half() -> None:
    assert best_threshold(SCORES, LABELS, grid=[0.5, 0.65]) == 0.65
    assert best_threshold([[0.9, 0.1]], [[True, False]], grid=[0.2, 0.5, 0.8]) == 0.5


def test_accuracy_and_roc_auc_on_hand_counts() -> None:
    scores = [0.9, 0.8, 0.3, 0.6, 0.2]
    correct = [True, False, False, True, False]
    assert accuracy_at(scores, correct, 0.5) == pytest.approx(4 / 5)
    # positives {0.9, 0.6} vs negatives {0.8, 0.3, 0.2}: 0.9 beats 3, 0.6 beats 2 -> 5/6
    assert roc_auc(scores, correct) == pytest.approx(5 / 6)
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5
    assert roc_auc([0.5], [True]) is None  # undefined with one class


def test_pr_curve_of_flagging_incorrect_drafts() -> None:
    scores = [0.9, 0.8, 0.3, 0.6, 0.2]
    correct = [True, False, False, True, False]
    p0, p1, p2 = flag_incorrect_pr_curve(scores, correct, [0.1, 0.5, 0.85])
    assert (p0.precision, p0.recall, p0.flagged) == (1.0, 0.0, 0)
    assert (p1.precision, p1.recall, p1.flagged) == (1.0, pytest.approx(2 / 3), 2)
    assert (p2.precision, p2.recall, p2.flagged) == (0.75, 1.0, 4)


def test_fix_and_break_rates_count_transitions_from_the_draft() -> None:
    fb = fix_break([False, False, False, True, True], [True, False, True, True, False])
    assert (fb.fixed, fb.wrong_drafts, fb.broken, fb.right_drafts) == (2, 3, 1, 2)
    assert fb.fix_rate == pytest.approx(2 / 3)
    assert fb.break_rate == pytest.approx(1 / 2)
    assert fix_break([True], [True]).fix_rate is None
    assert fix_break([False], [False]).break_rate is None


def test_bootstrap_ci_of_a_constant_is_that_constant() -> None:
    assert bootstrap_ci([1, 1, 1, 1]) == (1.0, 1.0)


def test_bootstrap_ci_matches_the_exact_resampling_distribution() -> None:
    # The 4^4 equally likely resamples of (0, 0, 0, 1): the mean is k/4, k ~ Binomial(4, 1/4).
    # P(k = 0) = 81/256 and P(k >= 3) = 13/256 > 2.5% > P(k = 4) = 1/256, so the exact 2.5% and
    # 97.5% quantiles are 0 and 3/4.
    values = [0.0, 0.0, 0.0, 1.0]
    means = sorted(float(np.mean(c)) for c in itertools.product(values, repeat=4))
    exact = (means[int(0.025 * len(means))], means[int(0.975 * len(means))])
    assert exact == (0.0, 0.75)
    assert bootstrap_ci(values, n_boot=20000, seed=1) == exact


def test_bootstrap_is_deterministic_per_seed() -> None:
    values = [0, 1, 1, 0, 1, 1, 1, 0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)


def test_paired_bootstrap_gives_the_floor_when_one_side_always_wins() -> None:
    a, b = [1] * 50, [0] * 50
    assert paired_bootstrap_pvalue(a, b, n_boot=999) == pytest.approx(1 / 1000)


def test_paired_bootstrap_gives_one_when_the_methods_agree() -> None:
    a = [1, 0, 1, 1, 0]
    assert paired_bootstrap_pvalue(a, a, n_boot=500) == 1.0


def test_paired_bootstrap_sees_no_difference_in_a_balanced_swap() -> None:
    # a wins on 10 questions, b on 10: observed difference 0 -> every resample is as extreme.
    a = [1] * 10 + [0] * 10
    b = [0] * 10 + [1] * 10
    assert paired_bootstrap_pvalue(a, b, n_boot=300) == 1.0


def test_paired_bootstrap_resamples_questions_keeping_their_steps_together() -> None:
    # Question 1: 10 steps, the SORM right on all, the ORM on none; question 2: 1 step, the
    # reverse. Pooled over steps the SORM leads by (10 - 1) / 11. Resampling the 2 questions
    # gives {q1, q1}: +1, {q2, q2}: -1, a mixed pair (probability 1/2): +9/11; only {q2, q2}
    # is as far from 9/11 as 9/11 is from 0, so p = 1/4, and the 95% CI spans -1 to +1.
    by_question = paired_bootstrap([10, 0], [0, 1], weights=[10, 1], n_boot=20000, seed=1)
    assert by_question.difference == pytest.approx(9 / 11)
    assert by_question.p_value == pytest.approx(0.25, abs=0.01)
    assert by_question.ci95 == (-1.0, 1.0)
    assert by_question.questions == 2
    # Treating the 11 steps as independent (the old, wrong unit) claims a sure difference.
    by_step = paired_bootstrap([1] * 10 + [0], [0] * 10 + [1], n_boot=20000, seed=1)
    assert by_step.difference == pytest.approx(9 / 11)
    assert by_step.p_value < 0.001


def test_paired_bootstrap_without_weights_is_the_difference_of_accuracies() -> None:
    a, b = [1, 1, 0, 1, 0, 1], [0, 1, 0, 0, 1, 0]
    result = paired_bootstrap(a, b, n_boot=500, seed=4)
    assert result.difference == pytest.approx(2 / 6)
    assert result.p_value == paired_bootstrap_pvalue(a, b, n_boot=500, seed=4)
    lo, hi = result.ci95
    assert lo <= result.difference <= hi
    assert result.to_dict()["sided"] == "two-sided"


def test_step_and_first_error_hits_count_per_solution() -> None:
    scores = [[0.9, 0.2, 0.7], [0.8, 0.9]]
    labels = [[True, False, False], [True, True]]
    assert step_hits(scores, labels, 0.5) == [2.0, 2.0]
    assert step_hits(scores, labels, 0.75) == [3.0, 2.0]
    assert first_error_hits(scores, labels, 0.5) == [1.0, 1.0]
    assert first_error_hits(scores, labels, 0.85) == [1.0, 0.0]  # 0.8 flags a right step


def test_within_question_pairwise_counts_only_pairs_inside_one_question() -> None:
    # q1: right 0.9 vs wrong 0.2 (hit) and 0.9 (tie, half); q2: right 0.3 beats both wrong ones;
    # q3: all right, no pair. Across questions q2's right 0.3 is below q1's wrong 0.9, which a
    # pooled AUC would punish and a reranker never sees.
    scores = [[0.9, 0.2, 0.9], [0.1, 0.05, 0.3], [0.5, 0.6]]
    correct = [[True, False, False], [False, False, True], [True, True]]
    r = within_question_pairwise(scores, correct)
    assert r.pairs == 4
    assert r.questions == 2
    assert r.accuracy == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_within_question_pairwise_is_none_without_a_mixed_question() -> None:
    r = within_question_pairwise([[0.3, 0.4], [0.9]], [[True, True], [False]])
    assert (r.accuracy, r.pairs, r.questions) == (None, 0, 0)


def test_within_question_pairwise_rejects_misaligned_input() -> None:
    with pytest.raises(ValueError, match="solution 0"):
        within_question_pairwise([[0.3, 0.4]], [[True]])
