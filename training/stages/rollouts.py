"""The policy's drafts of training questions with V* continuations per step prefix, and held-out
drafts of test questions for the reward models' evaluation, in resumable JSONL shards."""

from __future__ import annotations

from typing import Any

from engines.base import Role
from training.graph import Report, Run, StageSpec, dig, dir_hash
from training.rollouts import run_rollouts


def stage_rollouts(run: Run, seed: int) -> Report:
    policy = run.require(Role.POLICY)
    stats: dict[str, Any] = {}
    if run.acc.is_main_process:
        stats = run_rollouts(
            policy,
            run.problems("train"),
            run.problems("test"),
            run.rollouts_dir,
            run.cfg,
            seed=seed,
        )
    run.acc.wait_for_everyone()
    return {
        "counts": {k: stats.get(k) for k in ("questions", "drafts", "steps", "heldout_drafts")},
        "metrics": stats,
        "hashes": {"rollouts": dir_hash(run.rollouts_dir, "*.jsonl")},
    }


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "rollout_draft_accuracy": dig(entry, "metrics", "correct_fraction"),
        "vstar_vs_exact_disagreement": dig(entry, "metrics", "vstar_vs_exact", "rate"),
        "vstar_vs_exact_disagreement_no_consistency": dig(
            entry, "metrics", "vstar_vs_exact_no_consistency", "rate"
        ),
    }


SPEC = StageSpec(
    name="rollouts",
    sections=("rollouts",),
    upstream=("policy",),
    outputs=("rollouts/heldout.jsonl",),
    run=stage_rollouts,
    summary=summary,
    resumes_from=("rollouts",),  # its shards resume after a crash, never across inputs
)
