"""V* labelling and the paper's post-processing, on hand-built rollouts with exact labels."""

from __future__ import annotations

import pytest

from training.vstar import (
    DraftRollout,
    StepLabels,
    balance_per_step,
    disagreement,
    first_bad_step,
    orm_examples,
    propagate_positives,
    sorm_examples,
    vstar_labels,
)


def rollout(
    successes: tuple[int, ...],
    *,
    correct: bool = False,
    prefix_ok: tuple[bool, ...] | None = None,
    pid: str = "p",
    idx: int = 0,
    k: int = 4,
) -> DraftRollout:
    n = len(successes)
    return DraftRollout(
        problem_id=pid,
        draft_index=idx,
        steps=tuple(f"step {i}" for i in range(n)),
        answer="1",
        correct=correct,
        finish_reason="stop",
        prefix_ok=prefix_ok if prefix_ok is not None else tuple([True] * n),
        successes=successes,
        k=k,
    )


def test_a_step_is_positive_iff_any_continuation_reaches_the_answer() -> None:
    labels = vstar_labels(rollout((4, 1, 0, 0), k=4))
    assert labels.hard == (True, True, False, False)
    assert labels.soft == (1.0, 0.25, 0.0, 0.0)


def test_a_positive_step_makes_every_earlier_step_positive() -> None:
    raw = vstar_labels(rollout((0, 2, 0, 1, 0), k=4))
    assert raw.hard == (False, True, False, True, False)
    done = propagate_positives(raw)
    assert done.hard == (True, True, True, True, False)
    # soft labels take the best success fraction at or after each step
    assert done.soft == (0.5, 0.5, 0.25, 0.25, 0.0)


def test_propagation_leaves_monotone_labels_alone() -> None:
    raw = StepLabels(hard=(True, True, False), soft=(0.75, 0.5, 0.0))
    assert propagate_positives(raw) == raw


def test_first_bad_step_is_the_first_negative_label() -> None:
    assert first_bad_step(StepLabels((True, False, False), (1.0, 0.0, 0.0))) == 1
    assert first_bad_step(StepLabels((False, False), (0.0, 0.0))) == 0
    assert first_bad_step(StepLabels((True, True), (1.0, 1.0))) is None


def test_balancing_keeps_equal_positives_and_negatives_at_every_step_index() -> None:
    labels = [
        StepLabels((True, True, True), (1, 1, 1)),
        StepLabels((True, True, False), (1, 1, 0)),
        StepLabels((True, False, False), (1, 0, 0)),
        StepLabels((False, False, False), (0, 0, 0)),
        StepLabels((True, True), (1, 1)),
    ]
    masks = balance_per_step(labels, seed=0)
    for i in range(3):
        kept = [lab.hard[i] for lab, m in zip(labels, masks, strict=True) if i < len(m) and m[i]]
        assert kept.count(True) == kept.count(False)
    # the minority class is always kept whole: one negative at step 0, two at step 1
    assert masks[3][0] is True
    assert masks[2][1] is True and masks[3][1] is True
    # step 2: one positive (draft 0) against three negatives -> 1 + 1 kept
    assert masks[0][2] is True
    assert sum(m[2] for m in masks[:4]) == 2
    assert masks[4] is not None and len(masks[4]) == 2


def test_balancing_is_deterministic_by_seed() -> None:
    labels = [StepLabels((i % 3 == 0,), (0.0,)) for i in range(30)]
    assert balance_per_step(labels, seed=7) == balance_per_step(labels, seed=7)
    variants = {tuple(balance_per_step(labels, seed=s)) for s in range(5)}
    assert len(variants) > 1


def test_a_step_index_with_one_class_is_left_out_of_the_loss() -> None:
    labels = [StepLabels((True, True), (1, 1)), StepLabels((True, False), (1, 0))]
    masks = balance_per_step(labels, seed=0)
    assert masks[0][0] is False and masks[1][0] is False
    assert masks[0][1] is True and masks[1][1] is True


def test_sorm_examples_carry_post_processed_labels_and_drop_masked_steps() -> None:
    rs = [rollout((0, 1, 0), idx=0), rollout((0, 0, 0), idx=1)]
    # after propagation: (T, T, F) and (F, F, F); balancing keeps both rows at steps 0 and 1,
    # and at step 2 there are only negatives, so it is masked.
    rows = sorm_examples(rs, seed=0)
    assert [r.labels for r in rows] == [(1.0, 1.0, None), (0.0, 0.0, None)]
    soft = sorm_examples(rs, seed=0, soft=True)
    assert soft[0].labels == (0.25, 0.25, None)
    raw = sorm_examples(rs, seed=0, propagate=False, balance=False)
    assert [r.labels for r in raw] == [(0.0, 1.0, 0.0), (0.0, 0.0, 0.0)]


def test_orm_examples_label_every_step_with_final_correctness() -> None:
    rows = orm_examples([rollout((4, 4), correct=True, k=4), rollout((1, 0))])
    assert [r.labels for r in rows] == [(1.0, 1.0), (0.0, 0.0)]


def test_disagreement_counts_false_positives_and_false_negatives_against_prefix_ok() -> None:
    rs = [
        # V* (propagated): T T F ; exact: T F F -> one false positive at step 1
        rollout((1, 1, 0), prefix_ok=(True, False, False)),
        # V*: F F ; exact: T F -> one false negative at step 0
        rollout((0, 0), prefix_ok=(True, False)),
        # agreement everywhere
        rollout((4, 4), correct=True, prefix_ok=(True, True)),
    ]
    d = disagreement(rs)
    assert (d.steps, d.disagree, d.false_positive, d.false_negative) == (7, 2, 1, 1)
    assert d.rate == pytest.approx(2 / 7)
    # without propagation the first draft's raw labels (T, T, F) are the same
    assert disagreement(rs, propagate=False).disagree == 2


def test_a_rollout_row_round_trips_through_a_dict() -> None:
    r = rollout((3, 0), correct=False)
    assert DraftRollout.from_dict(r.to_dict()) == r


def test_a_rollout_with_mismatched_lengths_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="successes"):
        DraftRollout("p", 0, ("a", "b"), None, False, "stop", (True, True), (1,), 4)
    with pytest.raises(ValueError, match="successes"):
        DraftRollout("p", 0, ("a",), None, False, "stop", (True,), (5,), 4)


def test_with_the_consistency_check_only_continuations_using_the_step_result_count() -> None:
    base = rollout((2, 1, 0), k=2)
    r = DraftRollout(
        **{**base.__dict__, "consistent_successes": (2, 0, 0)}  # step 1's success ignored it
    )
    assert vstar_labels(r).hard == (True, True, False)
    assert vstar_labels(r, consistency=True).hard == (True, False, False)
    assert vstar_labels(r, consistency=True).soft == (1.0, 0.0, 0.0)
    # rows written before the check existed fall back to every success
    assert vstar_labels(base, consistency=True).hard == (True, True, False)
    with pytest.raises(ValueError, match="consistent_successes"):
        DraftRollout(**{**base.__dict__, "consistent_successes": (2, 2, 0)})
