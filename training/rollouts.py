"""Stage 2, rollouts: drafts per question, and K continuations from every step prefix (for V*).

Work is cut into shards of questions, fixed up front in `plan.json`. Each shard is sampled with
its own seed and written whole, atomically, as JSONL, so a run killed at any moment resumes at
the first missing shard with no row lost or duplicated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from engines.base import Completion, Generator, Role, SamplingParams
from engines.text import join_steps, policy_prompt, split_steps
from training import generation
from training.config import RolloutConfig, RunConfig
from training.tasks import Problem, check_solution
from training.tasks.checker import uses_result
from training.vstar import DraftRollout, disagreement

log = logging.getLogger(__name__)

PLAN = "plan.json"
HELDOUT = "heldout.jsonl"


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows to a temp file, fsync, then rename: readers see all rows or no file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def shard_path(directory: Path, index: int) -> Path:
    return directory / f"shard-{index:05d}.jsonl"


def read_rollouts(directory: Path) -> list[DraftRollout]:
    """Every row of every finished shard, in shard order."""
    rows: list[DraftRollout] = []
    for path in sorted(directory.glob("shard-*.jsonl")):
        rows += [DraftRollout.from_dict(d) for d in read_jsonl(path)]
    return rows


def read_heldout(directory: Path) -> list[DraftRollout]:
    return [DraftRollout.from_dict(d) for d in read_jsonl(directory / HELDOUT)]


def shard_seed(seed: int, index: int, salt: str) -> int:
    """A stable per-shard sampling seed (independent of Python's hash randomisation)."""
    digest = hashlib.sha256(f"{seed}:{index}:{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def prefix_prompt(problem: Problem, steps: Sequence[str], i: int) -> str:
    """The policy prompt continued by the draft's steps up to and including step `i`."""
    return policy_prompt(problem.question) + "".join(s + "\n" for s in steps[: i + 1])


@dataclass(frozen=True)
class Successes:
    """What K continuations of one step prefix reached.

    `hits` reach the right answer; `consistent` of those also use the value the prefix's last
    step states (the paper's consistency check, `uses_result`). `example` is one success, a
    consistent one when there is one. `samples` keeps every continuation as (text, correct,
    consistent): right and wrong endings of one prefix are within-question contrasts.
    """

    hits: int
    consistent: int
    example: str | None
    samples: tuple[tuple[str, bool, bool], ...]

    def count(self, consistency: bool) -> int:
        return self.consistent if consistency else self.hits


def count_successes(
    problem: Problem, prefix: Sequence[str], continuations: Sequence[Completion]
) -> Successes:
    """How many continuations of `prefix` reach the right answer (and do so consistently)."""
    samples = []
    for c in continuations:
        cont = split_steps(c.text)
        correct = check_solution(problem, [*prefix, *cont]).answer_correct
        consistent = correct and uses_result(prefix[-1], cont)
        samples.append((join_steps(cont), correct, consistent))
    hits = sum(ok for _, ok, _ in samples)
    consistent = sum(ok for _, _, ok in samples)
    example = next((t for t, _, ok in samples if ok), None) or next(
        (t for t, ok, _ in samples if ok), None
    )
    return Successes(hits, consistent, example, tuple(samples))


@dataclass(frozen=True)
class Draft:
    problem: Problem
    index: int
    steps: tuple[str, ...]
    finish_reason: str


def _drafts(
    gen: Generator,
    problems: Sequence[Problem],
    cfg: RolloutConfig,
    n: int,
    seed: int,
    max_new_tokens: int,
    show: bool,
) -> tuple[list[Draft], int]:
    """`n` drafts per question at cfg.temperature; empty drafts are dropped (and counted)."""
    params = SamplingParams(
        n=n, temperature=cfg.temperature, max_new_tokens=max_new_tokens, seed=seed
    )
    outs = generation.generate(
        gen, [policy_prompt(p.question) for p in problems], params, desc="drafts", show=show
    )
    drafts, empty = [], 0
    for p, comps in zip(problems, outs, strict=True):
        for j, c in enumerate(comps):
            steps = tuple(split_steps(c.text))[: cfg.max_steps]
            if steps:
                drafts.append(Draft(p, j, steps, c.finish_reason))
            else:
                empty += 1
    return drafts, empty


def rollout_shard(
    gen: Generator,
    problems: Sequence[Problem],
    cfg: RolloutConfig,
    *,
    seed: int,
    max_new_tokens: int,
    show: bool = True,
) -> tuple[list[DraftRollout], int]:
    """Drafts for `problems`, and V* counts from K continuations of every non-final prefix.

    The final step needs no sampling: the draft is its own continuation. Returns the rows and
    how many empty drafts were dropped.
    """
    drafts, empty = _drafts(gen, problems, cfg, cfg.drafts, seed, max_new_tokens, show)
    prefixes = [(d, i) for d in drafts for i in range(len(d.steps) - 1)]
    prompts = [prefix_prompt(d.problem, d.steps, i) for d, i in prefixes]
    params = SamplingParams(
        n=cfg.k, temperature=cfg.temperature, max_new_tokens=max_new_tokens, seed=seed + 1
    )
    outs = generation.generate(gen, prompts, params, desc="continuations", show=show)
    found: dict[tuple[int, int], Successes] = {}
    for (d, i), comps in zip(prefixes, outs, strict=True):
        found[(id(d), i)] = count_successes(d.problem, d.steps[: i + 1], comps)
    rows = [_row(d, cfg.k, [found[(id(d), i)] for i in range(len(d.steps) - 1)]) for d in drafts]
    return rows, empty


def _row(d: Draft, k: int, per_step: Sequence[Successes] | None = None) -> DraftRollout:
    """The draft's row: its exact check and, for each step but the last, what its continuations
    reached (`per_step`); with none sampled, the draft's own outcome stands at every step."""
    check = check_solution(d.problem, d.steps)
    last = k if check.answer_correct else 0
    row = DraftRollout(
        problem_id=d.problem.id,
        draft_index=d.index,
        steps=d.steps,
        answer=check.answer,
        correct=check.answer_correct,
        finish_reason=d.finish_reason,
        prefix_ok=check.prefix_ok,
        successes=(last,) * len(d.steps),
        k=k,
    )
    if per_step is None:
        return row
    return replace(
        row,
        successes=(*(f.hits for f in per_step), last),
        continuations=(*(f.example for f in per_step), None),
        consistent_successes=(*(f.consistent for f in per_step), last),
        samples=(*(f.samples for f in per_step), ()),
    )


def heldout_rows(
    gen: Generator,
    problems: Sequence[Problem],
    cfg: RolloutConfig,
    *,
    seed: int,
    max_new_tokens: int,
    drafts_per_question: int | None = None,
) -> list[DraftRollout]:
    """Drafts with exact labels only, no continuations: for reward-model evaluation, and as
    extra outcome-labelled ORM data (outcome labels need no V* sampling)."""
    n = cfg.heldout_drafts if drafts_per_question is None else drafts_per_question
    drafts, _ = _drafts(gen, problems, cfg, n, seed, max_new_tokens, True)
    return [_row(d, cfg.k) for d in drafts]


def _plan(directory: Path, problems: Sequence[Problem], per_shard: int) -> list[list[str]]:
    """The shards' question ids, written once; a resumed run must find the same plan."""
    shards = [
        [p.id for p in problems[i : i + per_shard]] for i in range(0, len(problems), per_shard)
    ]
    path = directory / PLAN
    if path.exists():
        old = json.loads(path.read_text())["shards"]
        if old != shards:
            raise RuntimeError(
                f"{path}: the rollout plan changed (questions or rollouts.shard_questions); "
                "delete the rollouts folder to start over"
            )
    else:
        tmp = path.with_name(PLAN + ".tmp")
        tmp.write_text(json.dumps({"shards": shards}))
        os.replace(tmp, path)
    return shards


def run_rollouts(
    policy_dir: Path,
    train: Sequence[Problem],
    heldout: Sequence[Problem],
    directory: Path,
    run: RunConfig,
    *,
    seed: int,
) -> dict[str, Any]:
    """Sample every missing shard (resuming a killed run), then the held-out drafts."""
    cfg = run.rollouts
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".*.tmp-*"):  # a killed writer's leftovers
        stale.unlink()
    questions = list(train[: cfg.questions] if cfg.questions is not None else train)
    by_id = {p.id: p for p in questions}
    plan = _plan(directory, questions, cfg.shard_questions)
    todo = [i for i in range(len(plan)) if not shard_path(directory, i).exists()]
    resumed = len(plan) - len(todo)
    if resumed:
        log.info("rollouts: %d of %d shards already done, resuming", resumed, len(plan))
    spec = generation.engine_spec(policy_dir, cfg.backend, cfg.max_batch_size)
    gen = generation.load_generator(Role.POLICY, spec)
    max_new = cfg.max_new_tokens
    empty_total = 0
    try:
        bar = tqdm(total=len(plan), initial=resumed, desc="rollout shards", unit="shard")
        for i in todo:
            rows, empty = rollout_shard(
                gen,
                [by_id[pid] for pid in plan[i]],
                cfg,
                seed=shard_seed(seed, i, "train"),
                max_new_tokens=max_new,
                show=False,
            )
            empty_total += empty
            write_jsonl_atomic(shard_path(directory, i), (r.to_dict() for r in rows))
            bar.update(1)
        bar.close()
        if not (directory / HELDOUT).exists():
            held = heldout_rows(
                gen,
                list(heldout[: cfg.heldout_questions]),
                cfg,
                seed=shard_seed(seed, 0, "heldout"),
                max_new_tokens=max_new,
            )
            write_jsonl_atomic(directory / HELDOUT, (r.to_dict() for r in held))
    finally:
        generation.close(gen)
    return rollout_stats(directory, resumed_shards=resumed, empty_drafts=empty_total)


def rollout_stats(directory: Path, **extra: Any) -> dict[str, Any]:
    """Counts and the V*-vs-exact disagreement, for the manifest."""
    rows = read_rollouts(directory)
    held = read_heldout(directory)
    steps = sum(len(r.steps) for r in rows)
    sampled = sum((len(r.steps) - 1) * r.k for r in rows)
    kept = sum(len(samples) for r in rows for samples in r.samples)
    return {
        "questions": len({r.problem_id for r in rows}),
        "drafts": len(rows),
        "correct_fraction": sum(r.correct for r in rows) / len(rows) if rows else None,
        "steps": steps,
        "continuations_sampled": sampled,
        "continuations_kept": kept,
        "heldout_drafts": len(held),
        "heldout_correct_fraction": sum(r.correct for r in held) / len(held) if held else None,
        # V* against the exact step check: with the paper's consistency check on and off, and
        # before the propagation of positives.
        "vstar_vs_exact": disagreement(rows, consistency=True).to_dict(),
        "vstar_vs_exact_no_consistency": disagreement(rows, consistency=False).to_dict(),
        "vstar_vs_exact_raw": disagreement(rows, propagate=False, consistency=False).to_dict(),
        **extra,
    }
