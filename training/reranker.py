"""Stage 6, the reranker: linear rerankers fitted to rank solutions *within* a question.

A reranker only ever compares candidates of one question, so it is fitted on within-question
(right, wrong) pairs of the policy's own outcome-labelled samples: the rollout drafts, every
continuation the V* rollouts sampled (prefix + continuation is a whole solution, right or wrong),
and the ORM's extra drafts. No exact step labels and no human labels. Each pair's loss is the
Bradley-Terry log-loss of the score difference, and every question weighs the same.

Features (engines.reranker.FEATURES) are read through the engines layer, as the service reads
them: the ORM's outcome score and the policy's token log-probabilities of the solution.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from engines.base import LikelihoodRequest, Role, ScoreRequest
from engines.reranker import (
    BUILTIN,
    DEFAULT_FILE,
    RERANKER_DIR,
    Readings,
    Reranker,
    feature_values,
)
from engines.text import join_steps, policy_prompt, split_steps
from training import generation
from training.evaluation.metrics import within_question_pairwise
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
    samples: Sequence[Sample], scores: Sequence[float]
) -> tuple[list[list[float]], list[list[bool]]]:
    """Scores and outcomes per question, for within_question_pairwise."""
    by_q: dict[str, tuple[list[float], list[bool]]] = defaultdict(lambda: ([], []))
    for s, v in zip(samples, scores, strict=True):
        by_q[s.problem_id][0].append(v)
        by_q[s.problem_id][1].append(s.correct)
    return [v[0] for v in by_q.values()], [v[1] for v in by_q.values()]


def split_questions(
    samples: Sequence[Sample], share: float, seed: int
) -> tuple[list[int], list[int]]:
    """Sample indices of (fit, check) questions: a seeded share of questions is held out."""
    questions = sorted({s.problem_id for s in samples})
    rng = random.Random(seed)
    held = set(rng.sample(questions, round(len(questions) * share)))
    fit = [i for i, s in enumerate(samples) if s.problem_id not in held]
    check = [i for i, s in enumerate(samples) if s.problem_id in held]
    return fit, check


def train_rerankers(
    samples: Sequence[Sample],
    readings: Sequence[Readings],
    variants: dict[str, Sequence[str]],
    *,
    l2: float,
    holdout_share: float,
    seed: int,
) -> tuple[dict[str, Reranker], dict[str, Any]]:
    """Fit every variant on most questions; measure each (and the built-in rerankers) by
    within-question pairwise accuracy on the held-out questions."""
    fit_idx, check_idx = split_questions(samples, holdout_share, seed)
    fitted: dict[str, Reranker] = {}
    table: dict[str, Any] = {}
    check = [samples[i] for i in check_idx]
    if not len(
        _pairs([samples[i].problem_id for i in fit_idx], [samples[i].correct for i in fit_idx])[0]
    ):
        # A tiny run (smoke) may hold no question with both outcomes: nothing can be fitted.
        log.warning("reranker: no within-question (right, wrong) pair to fit; none fitted")
        variants = {}
    for name, features in variants.items():
        x = np.array([feature_values(readings[i], features) for i in fit_idx])
        w, center, scale = fit_pairwise(
            x,
            [samples[i].problem_id for i in fit_idx],
            [samples[i].correct for i in fit_idx],
            l2=l2,
        )
        fitted[name] = Reranker(
            name,
            tuple(features),
            tuple(float(v) for v in w),
            tuple(float(v) for v in center),
            tuple(float(v) for v in scale),
            description=f"pairwise (Bradley-Terry) fit on {', '.join(features)}",
        )
    for name, reranker in {**BUILTIN, **fitted}.items():
        scores = [reranker.score(readings[i]) for i in check_idx]
        ranking = within_question_pairwise(*grouped(check, scores))
        table[name] = {
            "pairwise": ranking.accuracy,
            "pairs": ranking.pairs,
            "questions": ranking.questions,
        }
    counts = {
        "samples": len(samples),
        "fit_samples": len(fit_idx),
        "check_samples": len(check_idx),
        "by_source": {
            src: sum(s.source == src for s in samples) for src in ("draft", "extra", "continuation")
        },
        "correct_fraction": sum(s.correct for s in samples) / len(samples) if samples else None,
    }
    return fitted, {"heldout_pairwise": table, "counts": counts}


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
    "Sample",
    "collect_samples",
    "fit_pairwise",
    "read_features",
    "save_rerankers",
    "train_rerankers",
]
