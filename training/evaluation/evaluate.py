"""Evaluate a trained run end to end: problems, engines, strategies, V* labels, the report.

Validation questions pick the thresholds (step-level, and the ORM gate); test questions are
reported. Nothing here re-implements a strategy: every answer comes from service.pipeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from engines.base import Backend, Generator, Role, SamplingParams
from service.pipeline.types import Engines, PipelineConfig
from training.evaluation.report import build_report, gate_threshold, write_report
from training.evaluation.runner import METHODS, QuestionRecord, evaluate
from training.rollouts import count_successes, prefix_prompt
from training.tasks import (
    Problem,
    TaskConfig,
    canonical_question,
    generate_problem,
    load_gsm8k,
    load_problems,
)
from training.vstar import DraftRollout, propagate_positives, vstar_labels

log = logging.getLogger(__name__)

# Extra synthetic test problems come from a stream no training split ever reads.
EXTRA_TEST_STREAM = 1_000_003


@dataclass(frozen=True)
class EvalOptions:
    run: Path
    out: Path
    data: Path | None = None
    n_test: int = 1000
    n_val: int = 200
    k: int = 8
    vstar: bool = True
    seed: int = 0
    backend: str = "hf"
    concurrency: int = 32
    max_new_tokens: int = 160


# ------------------------------------------------------------------ problems


def _recipe(run: Path) -> dict[str, Any]:
    for role in Role:
        path = run / str(role) / "recipe.yaml"
        if path.exists():
            return yaml.safe_load(path.read_text()) or {}
    return {}


def held_out_problems(run: Path, n_test: int, n_val: int) -> tuple[list[Problem], list[Problem]]:
    """(test, val) problems: the run's own held-out splits, extended for synthetic runs.

    When the run kept fewer test problems than asked for, more come from a separate stream of
    the same task config, with every question the run trained or validated on left out.
    """
    data = run / "data"
    test = load_problems(data / "test.jsonl")
    val = load_problems(data / "val.jsonl")[:n_val]
    if len(test) < n_test:
        task = (_recipe(run).get("data") or {}).get("task")
        if (
            task is None
            or (_recipe(run).get("data") or {}).get("source", "synthetic") != "synthetic"
        ):
            log.warning("only %d held-out test problems in %s", len(test), data)
        else:
            test += _fresh_problems(run, TaskConfig.from_dict(task), n_test - len(test), test)
    return test[:n_test], val


def _fresh_problems(
    run: Path, task: TaskConfig, n: int, already: Sequence[Problem]
) -> list[Problem]:
    seen = {
        canonical_question(p.question)
        for split in ("train", "val")
        for p in load_problems(run / "data" / f"{split}.jsonl")
    } | {canonical_question(p.question) for p in already}
    out: list[Problem] = []
    index = 0
    while len(out) < n:
        if index > 50 * n + 1000:
            raise ValueError(f"task config yields too few new questions for {n} test problems")
        p = generate_problem(task, EXTRA_TEST_STREAM, index)
        index += 1
        key = canonical_question(p.question)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ------------------------------------------------------------------ V* labels


async def vstar_for(
    records: Sequence[QuestionRecord],
    problems: dict[str, Problem],
    policy: Generator,
    *,
    k: int,
    seed: int,
    max_new_tokens: int,
    chunk: int = 64,
    consistency: bool = True,
) -> None:
    """Label every draft step by V*, as the paper's training data was: sample K continuations
    from each step prefix; positive iff any reaches the right answer (using the step's stated
    result, with `consistency`); positives propagate back.
    """
    from tqdm.auto import tqdm

    jobs = [(r, i) for r in records for i in range(len(r.draft_steps) - 1)]
    params = SamplingParams(n=k, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
    hits: dict[tuple[str, int], int] = {}
    bar = tqdm(total=len(jobs), desc="V* continuations", unit="prefix")
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        prompts = [prefix_prompt(problems[r.problem_id], r.draft_steps, i) for r, i in part]
        outs = await policy.generate(prompts, params)
        for (r, i), comps in zip(part, outs, strict=True):
            prefix = r.draft_steps[: i + 1]
            found = count_successes(problems[r.problem_id], prefix, comps)
            hits[(r.problem_id, i)] = found.count(consistency)
        bar.update(len(part))
    bar.close()
    for r in records:
        if not r.draft_steps:
            r.vstar = []
            continue
        n = len(r.draft_steps)
        rollout = DraftRollout(
            problem_id=r.problem_id,
            draft_index=0,
            steps=tuple(r.draft_steps),
            answer=r.draft_answer,
            correct=r.draft_correct,
            finish_reason="stop",
            prefix_ok=tuple(r.exact_prefix_ok),
            successes=(
                *(hits[(r.problem_id, i)] for i in range(n - 1)),
                k if r.draft_correct else 0,
            ),
            k=k,
        )
        r.vstar = list(propagate_positives(vstar_labels(rollout)).hard)


# ------------------------------------------------------------------ the whole run


def load_run_engines(run: Path, backend: str) -> Any:
    from engines.registry import load_engines, run_dir_specs

    return load_engines(run_dir_specs(run, backend=Backend(backend)))


async def evaluate_run(
    options: EvalOptions, engines: Engines
) -> tuple[dict[str, Any], list[QuestionRecord]]:
    """Records for validation and test, V* labels, and the report (not yet written)."""
    if options.data is not None:
        test = load_gsm8k(options.data)[: options.n_test]
        val = load_problems(options.run / "data" / "val.jsonl")[: options.n_val]
        data_name = str(options.data)
    else:
        test, val = held_out_problems(options.run, options.n_test, options.n_val)
        data_name = f"{options.run}/data (held-out synthetic test split)"
    if not test:
        raise ValueError("no test problems to evaluate")
    base = PipelineConfig(max_new_tokens=options.max_new_tokens, seed=options.seed)
    started = time.perf_counter()

    glore_only = [m for m in METHODS if m.name == "glore"]
    val_records = await evaluate(
        val, engines, base, methods=glore_only, concurrency=options.concurrency, desc="validation"
    )
    gate = gate_threshold(val_records) if val_records else base.orm_threshold
    methods = [
        replace(m, overrides={**m.overrides, "orm_threshold": gate})
        if m.name == "glore_gated"
        else m
        for m in METHODS
    ]
    test_records = await evaluate(
        test, engines, base, methods=methods, concurrency=options.concurrency, desc="test"
    )
    if options.vstar:
        problems = {p.id: p for p in [*val, *test]}
        for records, salt in ((val_records, 1), (test_records, 2)):
            await vstar_for(
                records,
                problems,
                engines.policy,
                k=options.k,
                seed=options.seed + salt,
                max_new_tokens=options.max_new_tokens,
            )
    meta = {
        "run": str(options.run),
        "data": data_name,
        "n_test": len(test_records),
        "n_val": len(val_records),
        "k": options.k if options.vstar else None,
        "seed": options.seed,
        "backend": options.backend,
        "gate_threshold": gate,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return build_report(val_records, test_records, meta=meta, seed=options.seed), test_records


def run_evaluation(options: EvalOptions) -> dict[str, Path]:
    """`glore eval`: load the run's engines, evaluate, and write the report folder."""

    async def go() -> tuple[dict[str, Any], list[QuestionRecord]]:
        engines = load_run_engines(options.run, options.backend)
        try:
            return await evaluate_run(options, engines)
        finally:
            await engines.close()

    report, test_records = asyncio.run(go())
    options.out.mkdir(parents=True, exist_ok=True)
    with (options.out / "records.jsonl").open("w") as f:
        for r in test_records:
            f.write(json.dumps(r.to_dict()) + "\n")
    return write_report(report, test_records, options.out)
