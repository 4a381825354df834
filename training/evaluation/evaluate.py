"""Evaluate a trained run end to end: problems, engines, strategies, V* labels, the report.

Validation questions pick the thresholds (the SORM's, for step-level accuracy, and the ORM
gate); test or dev questions are reported. Every choice is made on dev; the test split is for
the end, and `RUN/evaluations.json` counts how often it was evaluated. A test evaluation
writes the thresholds it chose into `RUN/serving.json`, which `glore serve` uses as defaults.
Nothing here re-implements a strategy: every answer comes from service.pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from engines.base import Generator, Role, SamplingParams
from engines.reranker import default_reranker, run_rerankers
from service.pipeline.types import Engines, PipelineConfig
from service.settings import SERVING_FILE, Defaults, ServingDefaults, pipeline_config
from training.evaluation.report import build_report, gate_threshold, sorm_threshold, write_report
from training.evaluation.runner import METHODS, QuestionRecord, evaluate, greedy_correct
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

# Extra synthetic test problems, and the dev problems, come from streams no training split
# ever reads.
EXTRA_TEST_STREAM = 1_000_003
DEV_STREAM = 1_000_004
# The held-out parts of the generator (names and objects, phrasings) have streams of their own.
HELDOUT_STREAMS = {"heldout_names": 1_000_005, "heldout_templates": 1_000_006, "made_up": 1_000_007}
EVALUATIONS_FILE = "evaluations.json"


class Split(StrEnum):
    TEST = "test"  # reported once, at the end
    DEV = "dev"  # where every choice is made


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
    split: Split = Split.TEST
    n_heldout: int | None = None  # questions per held-out part; None = n_test, 0 = skip


# ------------------------------------------------------------------ problems


def _recipe(run: Path) -> dict[str, Any]:
    for role in Role:
        path = run / str(role) / "recipe.yaml"
        if path.exists():
            return yaml.safe_load(path.read_text()) or {}
    return {}


def _task(run: Path) -> TaskConfig | None:
    """The synthetic task config a run trained on; None for a run on other data."""
    data = _recipe(run).get("data") or {}
    if data.get("task") is None or data.get("source", "synthetic") != "synthetic":
        return None
    # Made-up words are a training device: the questions evaluated in distribution (dev, extra
    # test) are in everyday words, as the run's own test split is (see `make_splits`).
    return replace(TaskConfig.from_dict(data["task"]), pseudo_share=0.0)


def held_out_problems(run: Path, n_test: int, n_val: int) -> tuple[list[Problem], list[Problem]]:
    """(test, val) problems: the run's own held-out splits, extended for synthetic runs.

    When the run kept fewer test problems than asked for, more come from a separate stream of
    the same task config, with every question the run trained or validated on left out.
    """
    data = run / "data"
    test = load_problems(data / "test.jsonl")
    val = load_problems(data / "val.jsonl")[:n_val]
    if len(test) < n_test:
        task = _task(run)
        if task is None:
            log.warning("only %d held-out test problems in %s", len(test), data)
        else:
            test += _fresh_problems(run, task, n_test - len(test), Split.TEST)
    return test[:n_test], val


def dev_problems(run: Path, n_dev: int) -> list[Problem]:
    """The dev split: `RUN/data/dev.jsonl` when the run has one, else `n_dev` questions of a
    stream of its own, disjoint from train, validation and test (the extra ones included)."""
    path = run / "data" / "dev.jsonl"
    if path.exists():
        return load_problems(path)[:n_dev]
    task = _task(run)
    if task is None:
        raise ValueError(
            f"--split dev needs a synthetic run (its task config) or {path}; {run} has neither"
        )
    return _fresh_problems(run, task, n_dev, Split.DEV)


def fresh_split(question: str) -> Split:
    """Which split a freshly generated question may serve: a stable hash of the question halves
    the question space, so the extra test questions and the dev ones never overlap, whatever
    sizes either is asked for."""
    digest = hashlib.sha256(canonical_question(question).encode()).digest()
    return Split.DEV if digest[0] & 1 else Split.TEST


def heldout_problems(run: Path, n: int, split: Split) -> dict[str, list[Problem] | str]:
    """For each held-out part of the run's task generator (`TaskConfig.part`), `n` questions
    from it for `split` (dev and test draw disjoint halves), or why there are none."""
    task = _task(run)
    out: dict[str, list[Problem] | str] = {}
    for part, stream in HELDOUT_STREAMS.items():
        if task is None:
            out[part] = "the run did not train on the synthetic task"
            continue
        try:
            out[part] = _fresh_problems(run, task.held_out(part), n, split, stream=stream)
        except ValueError as e:  # e.g. a basic task that uses every template it has
            out[part] = str(e)
    return out


def _fresh_problems(
    run: Path, task: TaskConfig, n: int, split: Split, *, stream: int | None = None
) -> list[Problem]:
    """`n` generated questions for `split`, none of which the run trained, validated or tested
    on, from that split's stream (or `stream`) and its half of the question space."""
    seen = {
        canonical_question(p.question)
        for name in ("train", "val", "test")
        if (run / "data" / f"{name}.jsonl").exists()
        for p in load_problems(run / "data" / f"{name}.jsonl")
    }
    if stream is None:
        stream = DEV_STREAM if split is Split.DEV else EXTRA_TEST_STREAM
    out: list[Problem] = []
    index = 0
    while len(out) < n:
        if index > 100 * n + 1000:
            raise ValueError(f"task config yields too few new questions for {n} {split} problems")
        p = generate_problem(task, stream, index)
        index += 1
        key = canonical_question(p.question)
        if key not in seen and fresh_split(p.question) is split:
            seen.add(key)
            out.append(p)
    return out


# ------------------------------------------------------------------ the run's records


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def count_evaluation(run: Path, split: Split) -> dict[str, int]:
    """Add one to the run's count of `split` evaluations (RUN/evaluations.json); the counts
    after it. Counts are per split: looking at dev is free, looking at test is recorded."""
    path = run / EVALUATIONS_FILE
    counts = {str(s): 0 for s in Split} | (json.loads(path.read_text()) if path.exists() else {})
    counts[str(split)] += 1
    _write_json_atomic(path, counts)
    return counts


def write_serving_defaults(run: Path, defaults: ServingDefaults) -> Path:
    """RUN/serving.json, the thresholds `glore serve` takes by default, recorded in the run's
    manifest.json beside the stages that trained it."""
    path = run / SERVING_FILE
    _write_json_atomic(path, defaults.model_dump())
    manifest = run / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        data["serving"] = {"file": SERVING_FILE, **defaults.model_dump()}
        _write_json_atomic(manifest, data)
    return path


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

    return load_engines(run_dir_specs(run, backend=backend))


async def evaluate_run(
    options: EvalOptions, engines: Engines
) -> tuple[dict[str, Any], list[QuestionRecord]]:
    """Records for validation and the evaluated split (test or dev), V* labels, and the report
    (not yet written)."""
    if options.data is not None:
        if options.split is not Split.TEST:
            raise ValueError("--data evaluates an external test file; it takes no --split dev")
        test = load_gsm8k(options.data)[: options.n_test]
        val = load_problems(options.run / "data" / "val.jsonl")[: options.n_val]
        data_name = str(options.data)
    elif options.split is Split.DEV:
        test = dev_problems(options.run, options.n_test)
        val = load_problems(options.run / "data" / "val.jsonl")[: options.n_val]
        data_name = f"{options.run}/data (dev split: disjoint from train, validation and test)"
    else:
        test, val = held_out_problems(options.run, options.n_test, options.n_val)
        data_name = f"{options.run}/data (held-out synthetic test split)"
    if not test:
        raise ValueError(f"no {options.split} problems to evaluate")
    # The strategies rank with the run's chosen reranker, as `glore serve` does; the paper's
    # ORM ranks the `_orm` rows beside them.
    default = default_reranker(options.run)
    _, base = pipeline_config(
        Defaults(), max_new_tokens=options.max_new_tokens, seed=options.seed, reranker=default
    )
    started = time.perf_counter()

    glore_only = [m for m in METHODS if m.name == "glore"]

    async def validate(cfg: PipelineConfig) -> list[QuestionRecord]:
        return await evaluate(
            val, engines, cfg, methods=glore_only, concurrency=options.concurrency, desc="val"
        )

    val_records = await validate(base)
    # The draft and its readings do not depend on the SORM threshold, so it is chosen from them;
    # GLoRe's local candidates do, so validation reruns at the chosen one before the gate.
    chosen_sorm = sorm_threshold(val_records)
    if chosen_sorm != base.sorm_threshold:
        base = replace(base, sorm_threshold=chosen_sorm)
        val_records = await validate(base)
    gate = gate_threshold(val_records) if val_records else base.orm_threshold
    methods = [
        replace(m, overrides={**m.overrides, "orm_threshold": gate})
        if m.name == "glore_gated"
        else m
        for m in METHODS
    ]
    test_records = await evaluate(
        test, engines, base, methods=methods, concurrency=options.concurrency, desc=options.split
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
    heldout: dict[str, list[bool] | str] | None = None
    n_heldout = options.n_test if options.n_heldout is None else options.n_heldout
    if n_heldout > 0 and options.data is None:
        heldout = {}
        for part, problems in heldout_problems(options.run, n_heldout, options.split).items():
            if isinstance(problems, str):
                heldout[part] = problems
                continue
            heldout[part] = await greedy_correct(
                problems, engines, base, concurrency=options.concurrency, desc=part
            )
    meta = {
        "run": str(options.run),
        "data": data_name,
        "n_test": len(test_records),
        "n_val": len(val_records),
        "k": options.k if options.vstar else None,
        "seed": options.seed,
        "backend": options.backend,
        "split": str(options.split),
        "gate_threshold": gate,
        "sorm_threshold": chosen_sorm,
        "seconds": round(time.perf_counter() - started, 1),
    }
    report = build_report(
        val_records,
        test_records,
        meta=meta,
        seed=options.seed,
        default=default,
        rerankers=run_rerankers(options.run),
        heldout=heldout,
    )
    return report, test_records


def run_evaluation(options: EvalOptions) -> dict[str, Path]:
    """`glore eval`: load the run's engines, evaluate, and write the report folder."""

    async def go() -> tuple[dict[str, Any], list[QuestionRecord]]:
        engines = load_run_engines(options.run, options.backend)
        try:
            return await evaluate_run(options, engines)
        finally:
            await engines.close()

    report, test_records = asyncio.run(go())
    counts = count_evaluation(options.run, options.split)
    report["meta"] |= {"test_evaluations": counts["test"], "dev_evaluations": counts["dev"]}
    if options.split is Split.TEST:
        meta = report["meta"]
        chosen = ServingDefaults(
            sorm_threshold=meta["sorm_threshold"],
            orm_threshold=meta["gate_threshold"],
            report=str(options.out / "report.json"),
            written=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_serving_defaults(options.run, chosen)
    options.out.mkdir(parents=True, exist_ok=True)
    with (options.out / "records.jsonl").open("w") as f:
        for r in test_records:
            f.write(json.dumps(r.to_dict()) + "\n")
    return write_report(report, test_records, options.out)
