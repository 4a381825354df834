"""Step labels from rollouts: V* (can a prefix still reach the answer?) and the paper's clean-up.

Pure functions over `DraftRollout` rows, so the labelling the SORM learns from is tested exactly.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DraftRollout:
    """One sampled draft and what the K continuations from each of its step prefixes reached.

    `successes[i]` counts the continuations sampled from `steps[: i + 1]` that reach the
    correct answer. The last step needs no sampling: the draft itself is its only continuation,
    so its count is `k` when the draft is correct and 0 otherwise.
    `continuations[i]` keeps one successful continuation (text after the prefix) per step, the
    local refiner's target; None where none succeeded.
    `prefix_ok` is the task generator's exact check of every prefix, kept to measure V*.
    `consistent_successes[i]` counts only the successes that use step i's stated result (the
    paper's consistency check); empty in rows written before the check existed.
    `samples[i]` keeps every continuation of prefix i as (text, correct, consistent); empty for
    the final step and in rows made without continuations.
    """

    problem_id: str
    draft_index: int
    steps: tuple[str, ...]
    answer: str | None
    correct: bool
    finish_reason: str
    prefix_ok: tuple[bool, ...]
    successes: tuple[int, ...]
    k: int
    continuations: tuple[str | None, ...] = field(default=())
    consistent_successes: tuple[int, ...] = field(default=())
    samples: tuple[tuple[tuple[str, bool, bool], ...], ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.steps)
        if n == 0:
            raise ValueError("steps: a draft needs at least one step")
        if len(self.successes) != n or len(self.prefix_ok) != n:
            raise ValueError(
                f"successes/prefix_ok: need one entry per step ({n}), got "
                f"{len(self.successes)}/{len(self.prefix_ok)}"
            )
        if self.continuations and len(self.continuations) != n:
            raise ValueError(f"continuations: need one entry per step ({n})")
        if self.k < 1 or any(not 0 <= s <= self.k for s in self.successes):
            raise ValueError(f"successes: each count must lie in 0..k (k={self.k})")
        if self.consistent_successes and (
            len(self.consistent_successes) != n
            or any(
                not 0 <= c <= s
                for c, s in zip(self.consistent_successes, self.successes, strict=True)
            )
        ):
            raise ValueError("consistent_successes: one count per step, each <= successes")
        if self.samples and len(self.samples) != n:
            raise ValueError(f"samples: need one entry per step ({n})")

    def counts(self, consistency: bool) -> tuple[int, ...]:
        """Successes per step, counting only consistent ones when `consistency` (and known)."""
        return (
            self.consistent_successes
            if consistency and self.consistent_successes
            else (self.successes)
        )

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem_id, self.draft_index)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DraftRollout:
        return cls(
            problem_id=str(d["problem_id"]),
            draft_index=int(d["draft_index"]),
            steps=tuple(d["steps"]),
            answer=d.get("answer"),
            correct=bool(d["correct"]),
            finish_reason=str(d.get("finish_reason", "stop")),
            prefix_ok=tuple(bool(x) for x in d["prefix_ok"]),
            successes=tuple(int(x) for x in d["successes"]),
            k=int(d["k"]),
            continuations=tuple(d.get("continuations") or ()),
            consistent_successes=tuple(int(x) for x in d.get("consistent_successes") or ()),
            samples=tuple(
                tuple((str(t), bool(ok), bool(c)) for t, ok, c in step)
                for step in d.get("samples") or ()
            ),
        )


@dataclass(frozen=True)
class StepLabels:
    """Per-step labels of one draft. `hard[i]` is the V* label, `soft[i]` its success fraction."""

    hard: tuple[bool, ...]
    soft: tuple[float, ...]


def vstar_labels(rollout: DraftRollout, *, consistency: bool = False) -> StepLabels:
    """Raw V*: a step is positive iff any of its K continuations reaches the correct answer
    (with `consistency`, only continuations that use the step's stated result count)."""
    counts = rollout.counts(consistency)
    return StepLabels(
        hard=tuple(s > 0 for s in counts),
        soft=tuple(s / rollout.k for s in counts),
    )


def propagate_positives(labels: StepLabels) -> StepLabels:
    """The paper's first clean-up: a positive step makes every earlier step positive.

    If the solution can still be saved after step j, it could be saved after any earlier step
    (the policy might have written step j next), so a negative before a positive is sampling
    noise. The soft label follows the same logic: soft[i] = max(soft[j] for j >= i).
    """
    n = len(labels.hard)
    hard, soft = list(labels.hard), list(labels.soft)
    for i in range(n - 2, -1, -1):
        hard[i] = hard[i] or hard[i + 1]
        soft[i] = max(soft[i], soft[i + 1])
    return StepLabels(hard=tuple(hard), soft=tuple(soft))


def first_bad_step(labels: StepLabels) -> int | None:
    """Index of the first negative step (where the local refiner's critique goes), or None."""
    return next((i for i, ok in enumerate(labels.hard) if not ok), None)


def balance_per_step(labels: Sequence[StepLabels], seed: int) -> list[tuple[bool, ...]]:
    """The paper's second clean-up: as many positives as negatives at every step index.

    Returns a keep-mask per draft (False = the step's label is left out of the loss). At each
    step index the larger class is subsampled to the size of the smaller one; which labels stay
    is drawn with `seed`, so the result is deterministic. A step index with only one class keeps
    nothing, since it would teach the position and not the step.
    """
    by_index: dict[int, dict[bool, list[int]]] = defaultdict(lambda: {True: [], False: []})
    for d, lab in enumerate(labels):
        for i, positive in enumerate(lab.hard):
            by_index[i][positive].append(d)
    keep: list[list[bool]] = [[False] * len(lab.hard) for lab in labels]
    rng = random.Random(seed)
    for i in sorted(by_index):
        pos, neg = by_index[i][True], by_index[i][False]
        n = min(len(pos), len(neg))
        for group in (pos, neg):
            for d in rng.sample(group, n) if len(group) > n else group:
                keep[d][i] = True
    return [tuple(k) for k in keep]


@dataclass(frozen=True)
class SormExample:
    """One SORM training row: a draft's steps with a label per step (None = not in the loss)."""

    problem_id: str
    steps: tuple[str, ...]
    labels: tuple[float | None, ...]


def sorm_examples(
    rollouts: Sequence[DraftRollout],
    *,
    seed: int,
    soft: bool = False,
    propagate: bool = True,
    balance: bool = True,
    consistency: bool = False,
) -> list[SormExample]:
    """V* labels for every draft, post-processed as in the paper (each step can be turned off:
    the consistency check, the propagation of positives, the per-step balancing)."""
    labels = [vstar_labels(r, consistency=consistency) for r in rollouts]
    if propagate:
        labels = [propagate_positives(lab) for lab in labels]
    masks = (
        balance_per_step(labels, seed)
        if balance
        else [tuple([True] * len(lab.hard)) for lab in labels]
    )
    out = []
    for r, lab, mask in zip(rollouts, labels, masks, strict=True):
        values = lab.soft if soft else tuple(float(h) for h in lab.hard)
        step_labels = tuple(v if m else None for v, m in zip(values, mask, strict=True))
        if any(v is not None for v in step_labels):
            out.append(SormExample(r.problem_id, r.steps, step_labels))
    return out


def orm_examples(rollouts: Iterable[DraftRollout]) -> list[SormExample]:
    """ORM rows: the draft's final-answer correctness is the label at every step."""
    return [
        SormExample(r.problem_id, r.steps, tuple([float(r.correct)] * len(r.steps)))
        for r in rollouts
    ]


@dataclass(frozen=True)
class Disagreement:
    """How V* labels compare with the exact prefix check, over every step of every draft.

    false_positive: V* says the prefix can still succeed, the exact check says it is already
    wrong (a lucky continuation). false_negative: the prefix is right but no continuation found
    the answer (the policy is too weak from there, or K too small).
    """

    steps: int
    disagree: int
    false_positive: int
    false_negative: int

    @property
    def rate(self) -> float:
        return self.disagree / self.steps if self.steps else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "steps": self.steps,
            "disagree": self.disagree,
            "false_positive": self.false_positive,
            "false_negative": self.false_negative,
            "rate": self.rate,
        }


def disagreement(
    rollouts: Iterable[DraftRollout], *, propagate: bool = True, consistency: bool = False
) -> Disagreement:
    """Compare V* (optionally after propagation, optionally with the consistency check) with
    `prefix_ok` from the task's checker."""
    steps = fp = fn = 0
    for r in rollouts:
        lab = vstar_labels(r, consistency=consistency)
        if propagate:
            lab = propagate_positives(lab)
        for v, exact in zip(lab.hard, r.prefix_ok, strict=True):
            steps += 1
            fp += v and not exact
            fn += exact and not v
    return Disagreement(steps=steps, disagree=fp + fn, false_positive=fp, false_negative=fn)
