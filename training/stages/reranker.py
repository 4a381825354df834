"""Linear rerankers fitted on within-question pairs of the policy's outcome-labelled samples
(training.reranker); the recipe's `reranker.default` becomes the service's."""

from __future__ import annotations

import time
from typing import Any

from engines.base import Role
from engines.reranker import RERANKER_DIR, Reranker
from training.graph import Report, Run, StageSpec, dig, dir_hash
from training.reranker import (
    candidate_questions,
    candidate_rows,
    collect_samples,
    read_features,
    sample_rows,
    save_rerankers,
    save_rows,
    train_rerankers,
)
from training.rollouts import read_rollouts
from training.stages.orm import read_extra_drafts

ROWS_CACHE = ".cache/reranker_rows.json"  # every row, for training.reranker_ablation


def stage_reranker(run: Run, seed: int) -> Report:
    cfg = run.cfg.reranker
    policy, orm = run.require(Role.POLICY), run.require(Role.ORM)
    rollouts = read_rollouts(run.rollouts_dir)
    extra = read_extra_drafts(run) if cfg.extra_drafts else []
    samples = collect_samples(
        rollouts,
        extra,
        continuations=cfg.continuations,
        max_steps=run.cfg.rollouts.max_steps,
    )
    questions = {pid: p.question for pid, p in run.problems_by_id().items()}
    out: dict[str, Any] = {}
    if run.acc.is_main_process:
        start = time.perf_counter()
        readings = read_features(
            samples,
            questions,
            policy,
            orm,
            backend=cfg.backend,
            max_batch_size=cfg.max_batch_size,
        )
        rows = sample_rows(samples, readings)
        read_s = time.perf_counter() - start
        # GLoRe's own candidates on training questions that no refiner pair came from: the
        # policy's likelihood favours its greedy draft over a refiner's rewrite, and only such
        # rows show a fit by how much.
        used = {r.problem_id for r in (*rollouts, *read_extra_drafts(run))}
        fresh = candidate_questions(run.problems("train"), used, cfg.candidate_questions, seed)
        start = time.perf_counter()
        if fresh:
            rows += candidate_rows(run.out, fresh, backend=cfg.backend)
        candidates_s = time.perf_counter() - start
        if cfg.continuations and cfg.extra_drafts:
            # every row, for the dev ablation (training.reranker_ablation) to refit variants on
            save_rows(run.out / ROWS_CACHE, rows)
        fitted, report = train_rerankers(
            rows, cfg.variants, l2=cfg.l2, holdout_share=cfg.holdout_share, seed=seed
        )
        meta = {name: {"heldout": report["heldout_pairwise"].get(name)} for name in fitted}
        meta[cfg.default] = {
            "heldout": report["heldout_pairwise"].get(cfg.default),
            "chosen": "recipe reranker.default (chosen on the dev split)",
        }
        path = save_rerankers(run.out / RERANKER_DIR, fitted, cfg.default, meta)
        out = {
            "counts": report["counts"],
            "metrics": {
                "default": Reranker.load(path).name,
                "heldout_pairwise": report["heldout_pairwise"],
                "heldout_pairwise_candidates": report["heldout_pairwise_candidates"],
                "feature_seconds": round(read_s, 1),
                "candidate_seconds": round(candidates_s, 1),
            },
            "hashes": {"reranker": dir_hash(path.parent, "*.json")},
        }
    run.acc.wait_for_everyone()
    return out


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "reranker_default": dig(entry, "metrics", "default"),
        "reranker_heldout_pairwise": {
            name: row.get("pairwise")
            for name, row in (dig(entry, "metrics", "heldout_pairwise") or {}).items()
        },
    }


SPEC = StageSpec(
    name="reranker",
    sections=("reranker",),
    upstream=("policy", "rollouts", "orm"),
    outputs=(f"{RERANKER_DIR}/default.json",),
    run=stage_reranker,
    summary=summary,
)
