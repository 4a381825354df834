"""Stage 6, the reranker: linear rerankers fitted to rank solutions *within* a question.

A reranker only ever compares candidates of one question, so it is fitted on within-question
(right, wrong) pairs of outcome-labelled solutions: the policy's rollout drafts, every
continuation the V* rollouts sampled (prefix + continuation is a whole solution, right or wrong),
the ORM's extra drafts, and GLoRe's own candidates {draft, global, local} on training questions
that no refiner pair came from. No exact step labels and no human labels. Each pair's loss is
the Bradley-Terry log-loss of the score difference, and every question weighs the same.

Features (engines.reranker.FEATURES) are read through the engines layer, as the service reads
them: the ORM's outcome score and the policy's token log-probabilities of the solution.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from engines.base import LikelihoodRequest, Role, ScoreRequest
from engines.reranker import (
    BUILTIN,
    DEFAULT_FILE,
    FEATURES,
    RERANKER_DIR,
    Readings,
    Reranker,
    feature_values,
)
from engines.text import join_steps, policy_prompt, split_steps
from training import generation
from training.evaluation.metrics import within_question_pairwise
from training.evaluation.rerankers import candidate_features
from training.tasks import Problem
from training.vstar import DraftRollout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One whole solution of one question, with its outcome and where it came from."""

    problem_id: str
    steps: tuple[str, ...]
    correct: bool
    source: str  # draft | continuation | extra


def collect_samples(
    rollouts: Sequence[DraftRollout],
    extra: Sequence[DraftRollout],
    *,
    continuations: bool,
    max_steps: int,
) -> list[Sample]:
    """Every distinct (question, solution) the policy wrote, with its outcome label."""
    out: list[Sample] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(pid: str, steps: tuple[str, ...], correct: bool, source: str) -> None:
        if steps and (pid, steps) not in seen:
            seen.add((pid, steps))
            out.append(Sample(pid, steps, correct, source))

    for r in rollouts:
        add(r.problem_id, r.steps, r.correct, "draft")
    for r in extra:
        add(r.problem_id, r.steps, r.correct, "extra")
    if continuations:
        for r in rollouts:
            for i, step_samples in enumerate(r.samples):
                for text, correct, _ in step_samples:
                    steps = (*r.steps[: i + 1], *split_steps(text))[:max_steps]
                    add(r.problem_id, steps, correct, "continuation")
    return out


def read_features(
    samples: Sequence[Sample],
    questions: dict[str, str],
    policy_dir: Path,
    orm_dir: Path,
    *,
    backend: str,
    max_batch_size: int,
    chunk: int = 256,
) -> list[Readings]:
    """The ORM's and the policy's readings of every sample, through the engines layer."""
    policy = generation.load_generator(
        Role.POLICY, generation.engine_spec(policy_dir, backend, max_batch_size)
    )
    orm = generation.load_scorer(Role.ORM, generation.engine_spec(orm_dir, backend, max_batch_size))
    out: list[Readings] = []
    bar = tqdm(total=len(samples), desc="reranker features", unit="solution")

    async def go() -> None:
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            scores = await orm.score([ScoreRequest(questions[s.problem_id], s.steps) for s in part])
            reads = await policy.logprobs(
                [
                    LikelihoodRequest(policy_prompt(questions[s.problem_id]), join_steps(s.steps))
                    for s in part
                ]
            )
            out.extend(Readings(o, lp) for o, lp in zip(scores, reads, strict=True))
            bar.update(len(part))

    try:
        generation.run_async(go())
    finally:
        bar.close()
        generation.close(policy)
        generation.close(orm)
    return out


@dataclass(frozen=True)
class Row:
    """One outcome-labelled solution with every reranker feature (engines.reranker.FEATURES)."""

    problem_id: str
    correct: bool
    source: str  # draft | extra | continuation | candidate
    features: dict[str, float]


def _named(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    return dict(zip(names, values, strict=True))


def sample_rows(samples: Sequence[Sample], readings: Sequence[Readings]) -> list[Row]:
    names = list(FEATURES)
    return [
        Row(
            s.problem_id,
            s.correct,
            s.source,
            dict(zip(names, feature_values(r, names), strict=True)),
        )
        for s, r in zip(samples, readings, strict=True)
    ]


def save_rows(path: Path, rows: Sequence[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in rows]))


def load_rows(path: Path) -> list[Row]:
    return [Row(**d) for d in json.loads(path.read_text())]


def candidate_questions(
    problems: Sequence[Problem], used: set[str], n: int, seed: int
) -> list[Problem]:
    """`n` training questions that no rollout or extra draft came from (so no refiner pair was
    built on them), seeded."""
    fresh = [p for p in problems if p.id not in used]
    return random.Random(seed).sample(fresh, min(n, len(fresh)))


def candidate_rows(run_dir: Path, problems: Sequence[Problem], *, backend: str) -> list[Row]:
    """GLoRe's candidates {draft, global, local} (refine=always, the paper's ORM ranking) on
    `problems`, through the service's own pipeline, with their features and outcomes."""
    from engines.registry import load_engines, run_dir_specs
    from service.pipeline.types import PipelineConfig, RefineMode
    from training.evaluation.runner import METHODS, evaluate

    glore = [m for m in METHODS if m.name == "glore"]
    cfg = PipelineConfig(refine=RefineMode.ALWAYS)

    async def go() -> list[Row]:
        engines = load_engines(run_dir_specs(run_dir, backend=backend))
        try:
            records = await evaluate(problems, engines, cfg, methods=glore, desc="GLoRe candidates")
        finally:
            await engines.close()
        return [
            Row(r.problem_id, c.correct, "candidate", candidate_features(c))
            for r in records
            for c in r.ranked.get("glore", [])
            if c.features
        ]

    return generation.run_async(go())


def _pairs(groups: Sequence[str], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(right index, wrong index) for every within-question pair, and each pair's weight
    (1 / pairs of its question, so every question with both outcomes weighs the same)."""
    by_q: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, (g, ok) in enumerate(zip(groups, correct, strict=True)):
        by_q[g][0 if ok else 1].append(i)
    idx: list[tuple[int, int]] = []
    weights: list[float] = []
    for right, wrong in by_q.values():
        n = len(right) * len(wrong)
        for r in right:
            for w in wrong:
                idx.append((r, w))
                weights.append(1.0 / n)
    return np.array(idx, dtype=np.int64).reshape(-1, 2), np.array(weights)


def fit_pairwise(
    x: np.ndarray, groups: Sequence[str], correct: Sequence[bool], *, l2: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bradley-Terry weights on standardised features: (weights, center, scale).

    Minimises sum_pairs weight * log(1 + exp(-(w . (x_right - x_wrong)))) + l2 * |w|^2.
    """
    from scipy.optimize import minimize

    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (x - center) / scale
    idx, pw = _pairs(groups, correct)
    if len(idx) == 0:
        raise ValueError("no question has both a right and a wrong solution: nothing to fit")
    d = z[idx[:, 0]] - z[idx[:, 1]]  # [pairs, features]
    total = pw.sum()

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        m = d @ w
        # log(1 + exp(-m)), stably; its derivative in m is -sigmoid(-m).
        value = float((pw * np.logaddexp(0.0, -m)).sum() / total + l2 * w @ w)
        grad = -(d * (pw * _sigmoid(-m))[:, None]).sum(axis=0) / total + 2 * l2 * w
        return value, grad

    result = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B")
    return result.x, center, scale


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def grouped(
    rows: Sequence[Row], scores: Sequence[float]
) -> tuple[list[list[float]], list[list[bool]]]:
    """Scores and outcomes per question (and source: candidates of GLoRe and policy samples of
    one question are ranked apart, as the service ranks them), for within_question_pairwise."""
    by_q: dict[tuple[str, bool], tuple[list[float], list[bool]]] = defaultdict(lambda: ([], []))
    for r, v in zip(rows, scores, strict=True):
        key = (r.problem_id, r.source == "candidate")
        by_q[key][0].append(v)
        by_q[key][1].append(r.correct)
    return [v[0] for v in by_q.values()], [v[1] for v in by_q.values()]


def _group_keys(rows: Sequence[Row]) -> list[str]:
    return [f"{r.problem_id}|{'c' if r.source == 'candidate' else 's'}" for r in rows]


def split_questions(rows: Sequence[Row], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices of (fit, check) questions: a seeded share of questions is held out."""
    questions = sorted({r.problem_id for r in rows})
    rng = random.Random(seed)
    held = set(rng.sample(questions, round(len(questions) * share)))
    fit = [i for i, r in enumerate(rows) if r.problem_id not in held]
    check = [i for i, r in enumerate(rows) if r.problem_id in held]
    return fit, check


def fit_reranker(rows: Sequence[Row], name: str, features: Sequence[str], *, l2: float) -> Reranker:
    """One linear reranker, fitted on the within-question pairs of `rows`."""
    x = np.array([[r.features[f] for f in features] for r in rows])
    w, center, scale = fit_pairwise(x, _group_keys(rows), [r.correct for r in rows], l2=l2)
    return Reranker(
        name,
        tuple(features),
        tuple(float(v) for v in w),
        tuple(float(v) for v in center),
        tuple(float(v) for v in scale),
        description=f"pairwise (Bradley-Terry) fit on {', '.join(features)}",
    )


def measure_rows(reranker: Reranker, rows: Sequence[Row]) -> dict[str, Any]:
    scores = [reranker.score_features([r.features[f] for f in reranker.features]) for r in rows]
    ranking = within_question_pairwise(*grouped(rows, scores))
    return {"pairwise": ranking.accuracy, "pairs": ranking.pairs, "questions": ranking.questions}


def train_rerankers(
    rows: Sequence[Row],
    variants: dict[str, Sequence[str]],
    *,
    l2: float,
    holdout_share: float,
    seed: int,
) -> tuple[dict[str, Reranker], dict[str, Any]]:
    """Fit every variant on most questions; measure each (and the built-in rerankers) by
    within-question pairwise accuracy on the held-out questions: on all held-out rows, and on
    GLoRe's candidates alone (what the service ranks)."""
    fit_idx, check_idx = split_questions(rows, holdout_share, seed)
    fit, check = [rows[i] for i in fit_idx], [rows[i] for i in check_idx]
    fitted: dict[str, Reranker] = {}
    if not len(_pairs(_group_keys(fit), [r.correct for r in fit])[0]):
        # A tiny run (smoke) may hold no question with both outcomes: nothing can be fitted.
        log.warning("reranker: no within-question (right, wrong) pair to fit; none fitted")
        variants = {}
    for name, features in variants.items():
        fitted[name] = fit_reranker(fit, name, features, l2=l2)
    candidates = [r for r in check if r.source == "candidate"]
    table: dict[str, Any] = {}
    on_candidates: dict[str, Any] = {}
    for name, reranker in {**BUILTIN, **fitted}.items():
        table[name] = measure_rows(reranker, check)
        if candidates:
            on_candidates[name] = measure_rows(reranker, candidates)
    sources = ("draft", "extra", "continuation", "candidate")
    counts = {
        "samples": len(rows),
        "fit_samples": len(fit),
        "check_samples": len(check),
        "by_source": {src: sum(r.source == src for r in rows) for src in sources},
        "correct_fraction": sum(r.correct for r in rows) / len(rows) if rows else None,
    }
    return fitted, {
        "heldout_pairwise": table,
        "heldout_pairwise_candidates": on_candidates,
        "counts": counts,
    }


def save_rerankers(
    folder: Path, fitted: dict[str, Reranker], default: str, meta: dict[str, Any]
) -> Path:
    """reranker/<name>.json for each fitted variant, and reranker/default.json = the chosen one."""
    known = {**BUILTIN, **fitted}
    if default not in known and not fitted:
        # Nothing could be fitted (no within-question pairs): the paper's ORM serves, and the
        # manifest says so through the default's meta.
        meta = {**meta, "orm": {"fallback": f"{default!r} could not be fitted: no pairs"}}
        default = "orm"
    if default not in known:
        raise ValueError(f"reranker.default: unknown {default!r}; known: {sorted(known)}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, r in fitted.items():
        replace(r, meta=meta.get(name, {})).save(folder / f"{name}.json")
    replace(known[default], meta=meta.get(default, {})).save(folder / DEFAULT_FILE)
    return folder / DEFAULT_FILE


__all__ = [
    "RERANKER_DIR",
    "Row",
    "Sample",
    "candidate_questions",
    "candidate_rows",
    "collect_samples",
    "fit_pairwise",
    "fit_reranker",
    "read_features",
    "sample_rows",
    "save_rerankers",
    "train_rerankers",
]
