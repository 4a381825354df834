"""Fixed, disjoint splits: by seed, deduplicated by canonical question text."""

from __future__ import annotations

import pytest

from training.tasks import (
    Problem,
    TaskConfig,
    canonical_question,
    generate_problems,
    make_splits,
    split_problems,
)


def _keys(problems: tuple[Problem, ...]) -> set[str]:
    return {canonical_question(p.question) for p in problems}


def test_splits_have_the_asked_sizes_and_do_not_overlap() -> None:
    splits = make_splits(TaskConfig.tiny(), seed=0, n_train=1500, n_val=200, n_test=200)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1500, 200, 200)
    train, val, test = _keys(splits.train), _keys(splits.val), _keys(splits.test)
    assert (len(train), len(val), len(test)) == (1500, 200, 200)  # no duplicates inside a split
    assert not (train & val) and not (train & test) and not (val & test)
    ids = [p.id for _, part in splits for p in part]
    assert len(set(ids)) == len(ids)


def test_splits_are_fixed_by_seed() -> None:
    cfg = TaskConfig.easy()
    assert make_splits(cfg, 3, 100, 20, 20) == make_splits(cfg, 3, 100, 20, 20)
    assert make_splits(cfg, 3, 100, 20, 20).test != make_splits(cfg, 4, 100, 20, 20).test


def test_more_training_data_leaves_val_and_test_unchanged() -> None:
    cfg = TaskConfig.easy()
    small, big = make_splits(cfg, 1, 50, 30, 30), make_splits(cfg, 1, 400, 30, 30)
    assert small.test == big.test and small.val == big.val
    assert big.train[:50] == small.train


def test_duplicate_questions_are_dropped() -> None:
    # A narrow config repeats itself often; the splits must still be distinct.
    cfg = TaskConfig(min_steps=1, max_steps=1, start_min=2, start_max=9, add_min=2, add_max=5,
                     operations=("+", "-"), n_names=3, n_objects=2, n_templates=2,
                     derive_prob=0.0, combine_prob=0.0)  # fmt: skip
    stream = generate_problems(cfg, 200, seed=0)
    assert len({canonical_question(p.question) for p in stream}) < 200
    splits = make_splits(cfg, 0, 100, 20, 20)
    keys = [canonical_question(p.question) for _, part in splits for p in part]
    assert len(keys) == len(set(keys)) == 140


def test_a_config_too_narrow_for_the_request_raises() -> None:
    cfg = TaskConfig(min_steps=1, max_steps=1, start_min=2, start_max=2, add_min=2, add_max=2,
                     operations=("+",), n_names=2, n_objects=1, n_templates=1,
                     derive_prob=0.0, combine_prob=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="gave only 2 distinct questions"):
        make_splits(cfg, 0, 10, 1, 1)


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="n_val must be >= 0"):
        make_splits(TaskConfig.tiny(), 0, 10, -1, 1)


def test_canonical_question_ignores_case_spacing_and_unicode_form() -> None:
    assert canonical_question("  Tom  has\n5 Apples. ") == canonical_question("tom has 5 apples.")
    assert canonical_question("Café") == canonical_question("Cafe\u0301")


def test_given_problems_split_disjointly_after_dedupe() -> None:
    problems = generate_problems(TaskConfig.easy(), 100, seed=0)
    dupes = [
        Problem.from_dict({**p.to_dict(), "id": f"{p.id}-dup", "question": p.question.upper()})
        for p in problems[:10]
    ]
    splits = split_problems([*problems, *dupes], seed=0, n_val=10, n_test=10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 10, 10)
    assert not (_keys(splits.train) & _keys(splits.test))
    assert split_problems(problems, 0, 10, 10) == split_problems(problems, 0, 10, 10)
    with pytest.raises(ValueError, match="must be >= 0 and fit"):
        split_problems(problems, 0, 60, 60)
