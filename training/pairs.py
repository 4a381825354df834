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
from collections.abc import Callable, Mapping, Sequence
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


@dataclass(frozen=True)
class _Sources:
    """What a pair may draw on: the questions, their correct drafts, and the pairs' one rng."""

    problems: Mapping[str, HasSolution]
    correct: Mapping[str, list[DraftRollout]]
    rng: random.Random
    use_reference: bool

    def question(self, r: DraftRollout) -> str:
        return self.problems[r.problem_id].question

    def solution(self, problem_id: str) -> tuple[str, ...] | None:
        return _a_correct_solution(
            problem_id, self.correct, self.problems, self.rng, self.use_reference
        )


def _pairs(
    rollouts: Sequence[DraftRollout],
    problems: Mapping[str, HasSolution],
    fix: Callable[[DraftRollout, _Sources], RefinePair | None],
    keep: Callable[[DraftRollout, _Sources], RefinePair],
    *,
    seed: int,
    keep_share: float,
    use_reference: bool = False,
) -> list[RefinePair]:
    """A fix pair for each incorrect draft (`fix` gives None where it finds no target), then keep
    pairs from randomly chosen correct drafts, `keep_share` of all pairs."""
    src = _Sources(problems, _correct_solutions(rollouts), random.Random(seed), use_reference)
    fixes = [p for r in rollouts if not r.correct and (p := fix(r, src)) is not None]
    keep_from = [r for r in rollouts if r.correct]
    chosen = src.rng.sample(keep_from, _keep_count(len(fixes), len(keep_from), keep_share))
    return fixes + [keep(r, src) for r in chosen]


def global_pairs(
    rollouts: Sequence[DraftRollout],
    problems: Mapping[str, HasSolution],
    *,
    seed: int,
    keep_share: float = DEFAULT_KEEP_SHARE,
    use_reference: bool = True,
) -> list[RefinePair]:
    """Global refinement pairs: every incorrect draft, paired with a correct solution."""
    return _pairs(
        rollouts,
        problems,
        _global_fix,
        _global_keep,
        seed=seed,
        keep_share=keep_share,
        use_reference=use_reference,
    )


def _global_fix(r: DraftRollout, src: _Sources) -> RefinePair | None:
    target = src.solution(r.problem_id)
    if target is None:
        return None
    prompt = global_refine_prompt(src.question(r), join_steps(r.steps))
    return RefinePair(r.problem_id, PairKind.FIX, prompt, join_steps(target))


def _global_keep(r: DraftRollout, src: _Sources) -> RefinePair:
    prompt = global_refine_prompt(src.question(r), join_steps(r.steps))
    return RefinePair(r.problem_id, PairKind.KEEP, prompt, join_steps(r.steps))


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
    return _pairs(
        rollouts,
        problems,
        _vstar_fix,
        _local_keep,
        seed=seed,
        keep_share=keep_share,
        use_reference=use_reference,
    )


def _vstar_fix(r: DraftRollout, src: _Sources) -> RefinePair | None:
    bad = first_bad_step(propagate_positives(vstar_labels(r)))
    if bad is None:  # an incorrect draft's last step is always negative; defensive
        return None
    prompt = local_refine_prompt(src.question(r), join_steps(r.steps), bad).prompt
    if bad == 0:
        whole = src.solution(r.problem_id)
        if whole is None:
            return None
        target = join_steps(whole)
    else:
        cont = r.continuations[bad - 1] if r.continuations else None
        if not cont or not split_steps(cont):
            return None
        target = join_steps(split_steps(cont))
    return RefinePair(r.problem_id, PairKind.FIX, prompt, target)


def _local_keep(r: DraftRollout, src: _Sources) -> RefinePair:
    """A random step of a correct draft is marked; the target is the draft's own remaining
    steps."""
    mark = src.rng.randrange(len(r.steps))
    local = local_refine_prompt(src.question(r), join_steps(r.steps), mark)
    return RefinePair(r.problem_id, PairKind.KEEP, local.prompt, join_steps(r.steps[mark:]))


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
    return _pairs(drafts, problems, _sibling_fix, _local_keep, seed=seed, keep_share=keep_share)


def _sibling_fix(r: DraftRollout, src: _Sources) -> RefinePair | None:
    siblings = src.correct.get(r.problem_id)
    if not siblings or not r.steps:
        return None
    best = max(siblings, key=lambda s: _shared_prefix(r.steps, s.steps))
    bad = min(_shared_prefix(r.steps, best.steps), len(r.steps) - 1)
    if bad >= len(best.steps):
        return None
    prompt = local_refine_prompt(src.question(r), join_steps(r.steps), bad).prompt
    return RefinePair(r.problem_id, PairKind.FIX, prompt, join_steps(best.steps[bad:]))
