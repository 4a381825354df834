"""Rollout shards on disk: atomic writes, a fixed plan, and reading back every row once."""

from __future__ import annotations

import pytest

from training.rollouts import (
    _plan,
    read_rollouts,
    shard_path,
    shard_seed,
    write_jsonl_atomic,
)
from training.tasks import TaskConfig, generate_problems
from training.vstar import DraftRollout


def row(pid: str, idx: int) -> DraftRollout:
    return DraftRollout(pid, idx, ("a", "b"), None, False, "stop", (True, False), (1, 0), 2)


def test_shards_are_read_back_in_order_with_every_row_once(tmp_path) -> None:
    write_jsonl_atomic(shard_path(tmp_path, 1), [row("q2", 0).to_dict()])
    write_jsonl_atomic(shard_path(tmp_path, 0), [row("q1", 0).to_dict(), row("q1", 1).to_dict()])
    # a writer killed before its rename leaves only a hidden temp file, which is never read
    (tmp_path / ".shard-00002.jsonl.tmp-123").write_text('{"partial": ')
    assert [r.key for r in read_rollouts(tmp_path)] == [("q1", 0), ("q1", 1), ("q2", 0)]


def test_the_rollout_plan_is_fixed_once_and_a_changed_plan_is_refused(tmp_path) -> None:
    problems = generate_problems(TaskConfig.tiny(), 5, seed=0)
    plan = _plan(tmp_path, problems, 2)
    assert [len(s) for s in plan] == [2, 2, 1]
    assert _plan(tmp_path, problems, 2) == plan
    with pytest.raises(RuntimeError, match="shard_questions"):
        _plan(tmp_path, problems, 3)


def test_shard_seeds_are_stable_and_distinct() -> None:
    assert shard_seed(0, 1, "train") == shard_seed(0, 1, "train")
    assert len({shard_seed(0, i, "train") for i in range(100)}) == 100
    assert shard_seed(0, 0, "train") != shard_seed(0, 0, "heldout")
