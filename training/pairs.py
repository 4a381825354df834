"""Refinement pairs from rollouts: what the global and local refiners learn to write.

global: (question, incorrect draft) -> a correct solution to the same question.
local:  (question, incorrect draft with the critique marker before its first bad step, as located
        by V*) -> a continuation from the last good prefix that reaches the correct answer.
Both also get a share of correct drafts whose target is the draft itself ("keep" pairs), so the
refiners learn to leave right answers alone (see `keep_share`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

from engines.text import global_refine_prompt, join_steps, local_refine_prompt, split_steps
from training.vstar import DraftRollout, first_bad_step, propagate_positives, vstar_labels

# Share of each refiner's pairs that are correct drafts mapped to themselves. The paper does not
# give a figure. On the tiny preset 20% left the global refiner breaking 39% of right drafts on a
# dev set; 50% (with 4x the pairs) brought that to 17% while it fixed more wrong ones (20% -> 38%).
DEFAULT_KEEP_SHARE = 0.5


class PairKind(StrEnum):
    FIX = "fix"  # incorrect draft -> correct solution
    KEEP = "keep"  # correct draft -> itself


class HasSolution(Protocol):
    """The part of `training.tasks.Problem` the pairs need."""

    @property
    def question(self) -> str: ...
    @property
    def steps(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class RefinePair:
    """A prompt (rendered through engines.text) and the completion the refiner must write.

    The target carries no EOS; the trainer appends the tokenizer's EOS token.
    """

    problem_id: str
    kind: PairKind
    prompt: str
    target: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _correct_solutions(
    rollouts: Sequence[DraftRollout],
) -> dict[str, list[DraftRollout]]:
    out: dict[str, list[DraftRollout]] = defaultdict(list)
    for r in rollouts:
        if r.correct:
            out[r.problem_id].append(r)
    return out


def _a_correct_solution(
    problem_id: str,
    correct: Mapping[str, list[DraftRollout]],
    problems: Mapping[str, HasSolution],
    rng: random.Random,
    use_reference: bool,
) -> tuple[str, ...] | None:
    """A correct solution for the question: one of the policy's own correct drafts (on-policy
    style, as in the paper) chosen with `rng`, else the reference solution when allowed."""
    drafts = correct.get(problem_id)
    if drafts:
        return rng.choice(drafts).steps
    if use_reference:
        return problems[problem_id].steps
    return None


def _keep_count(n_fix: int, n_available: int, keep_share: float) -> int:
    """How many keep pairs make them `keep_share` of all pairs, capped by what is available."""
    if not 0 <= keep_share < 1:
        raise ValueError(f"keep_share must be in [0, 1), got {keep_share}")
    want = round(n_fix * keep_share / (1 - keep_share))
    return min(want, n_available)


def global_pairs(
    rollouts: Sequence[DraftRollout],
    problems: Mapping[str, HasSolution],
    *,
    seed: int,
    keep_share: float = DEFAULT_KEEP_SHARE,
    use_reference: bool = True,
) -> list[RefinePair]:
    """Global refinement pairs: every incorrect draft, paired with a correct solution."""
    rng = random.Random(seed)
    correct = _correct_solutions(rollouts)
    fixes: list[RefinePair] = []
    for r in rollouts:
        if r.correct:
            continue
        target = _a_correct_solution(r.problem_id, correct, problems, rng, use_reference)
        if target is None:
            continue
        q = problems[r.problem_id].question
        prompt = global_refine_prompt(q, join_steps(r.steps))
        fixes.append(RefinePair(r.problem_id, PairKind.FIX, prompt, join_steps(target)))
    keep_from = [r for r in rollouts if r.correct]
    keeps = [
        RefinePair(
            r.problem_id,
            PairKind.KEEP,
            global_refine_prompt(problems[r.problem_id].question, join_steps(r.steps)),
            join_steps(r.steps),
        )
        for r in rng.sample(keep_from, _keep_count(len(fixes), len(keep_from), keep_share))
    ]
    return fixes + keeps


def local_pairs(
    rollouts: Sequence[DraftRollout],
    problems: Mapping[str, HasSolution],
    *,
    seed: int,
    keep_share: float = DEFAULT_KEEP_SHARE,
    use_reference: bool = True,
) -> list[RefinePair]:
    """Local refinement pairs from the V* labels (after propagating positives backwards).

    The critique goes before the first negative step b. The target is a continuation sampled from
    the good prefix steps[:b] that reached the correct answer (it exists, since step b-1 is
    positive). When b == 0 nothing is worth keeping and the target is a whole correct solution.
    Keep pairs mark a random step of a correct draft and target the draft's own remaining steps.
    """
    rng = random.Random(seed)
    correct = _correct_solutions(rollouts)
    fixes: list[RefinePair] = []
    for r in rollouts:
        if r.correct:
            continue
        labels = propagate_positives(vstar_labels(r))
        bad = first_bad_step(labels)
        if bad is None:  # an incorrect draft's last step is always negative; defensive
            continue
        q = problems[r.problem_id].question
        prompt = local_refine_prompt(q, join_steps(r.steps), bad).prompt
        if bad == 0:
            whole = _a_correct_solution(r.problem_id, correct, problems, rng, use_reference)
            if whole is None:
                continue
            target = join_steps(whole)
        else:
            cont = r.continuations[bad - 1] if r.continuations else None
            if not cont or not split_steps(cont):
                continue
            target = join_steps(split_steps(cont))
        fixes.append(RefinePair(r.problem_id, PairKind.FIX, prompt, target))
    return fixes + _local_keeps(rollouts, problems, rng, len(fixes), keep_share)


def _local_keeps(
    drafts: Sequence[DraftRollout],
    problems: Mapping[str, HasSolution],
    rng: random.Random,
    n_fix: int,
    keep_share: float,
) -> list[RefinePair]:
    """Keep pairs for the local refiner: a random step of a correct draft is marked, and the
    target is the draft's own remaining steps."""
    keep_from = [r for r in drafts if r.correct]
    keeps = []
    for r in rng.sample(keep_from, _keep_count(n_fix, len(keep_from), keep_share)):
        mark = rng.randrange(len(r.steps))
        local = local_refine_prompt(problems[r.problem_id].question, join_steps(r.steps), mark)
        keeps.append(
            RefinePair(r.problem_id, PairKind.KEEP, local.prompt, join_steps(r.steps[mark:]))
        )
    return keeps


def _shared_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading steps two solutions have in common, verbatim."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def sibling_local_pairs(
    drafts: Sequence[DraftRollout],
    problems: Mapping[str, HasSolution],
    *,
    seed: int,
    keep_share: float = DEFAULT_KEEP_SHARE,
) -> list[RefinePair]:
    """Local refinement pairs from outcome labels alone, for drafts that have no V* labels.

    An incorrect draft with a correct sibling (a draft of the same question that reached the
    answer) gets the critique at the first step where it leaves the sibling that shares most of
    its steps. The steps before that are a prefix from which the policy did reach the right
    answer: a V*-positive prefix, with the sibling as its one witness. The target is the
    sibling's remaining steps. (On the tiny preset's extra drafts this first departure is the
    exact first error for 83% of them.) Keep pairs are as in `local_pairs`.
    """
    rng = random.Random(seed)
    correct = _correct_solutions(drafts)
    fixes: list[RefinePair] = []
    for r in drafts:
        siblings = correct.get(r.problem_id)
        if r.correct or not siblings or not r.steps:
            continue
        best = max(siblings, key=lambda s: _shared_prefix(r.steps, s.steps))
        bad = min(_shared_prefix(r.steps, best.steps), len(r.steps) - 1)
        if bad >= len(best.steps):
            continue
        q = problems[r.problem_id].question
        prompt = local_refine_prompt(q, join_steps(r.steps), bad).prompt
        fixes.append(RefinePair(r.problem_id, PairKind.FIX, prompt, join_steps(best.steps[bad:])))
    return fixes + _local_keeps(drafts, problems, rng, len(fixes), keep_share)
