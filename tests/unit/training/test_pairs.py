"""Construction of the refiners' training pairs from hand-built rollouts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from engines.text import CRITIQUE_MARKER, global_refine_prompt, local_refine_prompt
from training.pairs import PairKind, global_pairs, local_pairs, sibling_local_pairs
from training.vstar import DraftRollout


@dataclass(frozen=True)
class P:
    question: str
    steps: tuple[str, ...]


PROBLEMS = {
    "a": P("Ann has 2 apples and buys 3. How many?", ("2 + 3 = 5.", "The answer is 5.")),
    "b": P("Bob has 4 pens and loses 1. How many?", ("4 - 1 = 3.", "The answer is 3.")),
}


def draft(pid: str, idx: int, steps: tuple[str, ...], correct: bool, successes, conts=()):
    return DraftRollout(
        problem_id=pid,
        draft_index=idx,
        steps=steps,
        answer=None,
        correct=correct,
        finish_reason="stop",
        prefix_ok=tuple([correct] * len(steps)),
        successes=tuple(successes),
        k=2,
        continuations=tuple(conts) or tuple([None] * len(steps)),
    )


GOOD_A = draft("a", 0, ("2 + 3 = 5.", "The answer is 5."), True, (2, 2))
BAD_A = draft(
    "a",
    1,
    ("2 + 1 = 3.", "3 + 1 = 4.", "The answer is 4."),
    False,
    # step 0 can still be saved ("... = 5" found once), step 1 cannot
    (1, 0, 0),
    ("3 + 2 = 5.\nThe answer is 5.", None, None),
)
BAD_B = draft("b", 0, ("4 + 1 = 5.", "The answer is 5."), False, (0, 0))


def test_global_pairs_map_an_incorrect_draft_to_a_correct_draft_of_the_same_question() -> None:
    pairs = global_pairs([GOOD_A, BAD_A], PROBLEMS, seed=0, keep_share=0.0)
    assert len(pairs) == 1
    (p,) = pairs
    assert p.kind is PairKind.FIX
    assert p.prompt == global_refine_prompt(PROBLEMS["a"].question, "\n".join(BAD_A.steps))
    assert p.target == "2 + 3 = 5.\nThe answer is 5."


def test_global_pairs_fall_back_to_the_reference_only_when_allowed() -> None:
    with_ref = global_pairs([BAD_B], PROBLEMS, seed=0, keep_share=0.0)
    assert [p.target for p in with_ref] == ["4 - 1 = 3.\nThe answer is 3."]
    assert global_pairs([BAD_B], PROBLEMS, seed=0, keep_share=0.0, use_reference=False) == []


def test_local_pairs_put_the_critique_before_the_first_bad_step_and_continue_the_good_prefix():
    (p,) = local_pairs([BAD_A], PROBLEMS, seed=0, keep_share=0.0)
    expected = local_refine_prompt(PROBLEMS["a"].question, "\n".join(BAD_A.steps), 1)
    assert p.prompt == expected.prompt
    assert f"{CRITIQUE_MARKER} 3 + 1 = 4." in p.prompt
    assert p.prompt.endswith("Refined:\n2 + 1 = 3.\n")
    assert p.target == "3 + 2 = 5.\nThe answer is 5."
    assert p.kind is PairKind.FIX


def test_a_draft_bad_from_its_first_step_gets_a_whole_correct_solution() -> None:
    (p,) = local_pairs([BAD_B], PROBLEMS, seed=0, keep_share=0.0)
    assert p.prompt.startswith("Question: Bob")
    assert f"{CRITIQUE_MARKER} 4 + 1 = 5." in p.prompt
    assert p.target == "4 - 1 = 3.\nThe answer is 3."


def test_keep_pairs_make_up_the_documented_share_and_target_the_draft_itself() -> None:
    goods = [draft("a", i, ("2 + 3 = 5.", "The answer is 5."), True, (2, 2)) for i in range(10)]
    bads = [BAD_A, BAD_B] * 4  # 8 fixes
    pairs = global_pairs([*goods, *bads], PROBLEMS, seed=3, keep_share=0.2)
    keeps = [p for p in pairs if p.kind is PairKind.KEEP]
    assert len(pairs) == 10 and len(keeps) == 2  # 2 / 10 = 20%
    assert all(p.target == "2 + 3 = 5.\nThe answer is 5." for p in keeps)
    local = local_pairs([*goods, *bads], PROBLEMS, seed=3, keep_share=0.2)
    local_keeps = [p for p in local if p.kind is PairKind.KEEP]
    assert len(local_keeps) == 2
    for p in local_keeps:
        # the marked step and everything after it are the target: nothing changes
        marked = 0 if f"{CRITIQUE_MARKER} 2 + 3" in p.prompt else 1
        assert p.target == "\n".join(GOOD_A.steps[marked:])


def test_pairs_are_deterministic_by_seed() -> None:
    rs = [GOOD_A, BAD_A, BAD_B, draft("a", 5, ("1 + 4 = 5.", "The answer is 5."), True, (2, 2))]
    assert global_pairs(rs, PROBLEMS, seed=1) == global_pairs(rs, PROBLEMS, seed=1)
    assert local_pairs(rs, PROBLEMS, seed=1) == local_pairs(rs, PROBLEMS, seed=1)


def test_a_keep_share_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_share"):
        global_pairs([GOOD_A, BAD_A], PROBLEMS, seed=0, keep_share=1.0)


def test_sibling_pairs_put_the_critique_where_a_wrong_draft_leaves_a_right_one() -> None:
    q = "Cy has 2 cats, gets 3, then 4 more. How many?"
    problems = {"c": P(q, ("2 + 3 = 5.", "5 + 4 = 9.", "The answer is 9."))}
    right = ("2 + 3 = 5.", "5 + 4 = 9.", "The answer is 9.")
    other_right = ("3 + 2 = 5.", "5 + 4 = 9.", "The answer is 9.")
    wrong = ("2 + 3 = 5.", "5 + 4 = 8.", "The answer is 8.")
    drafts = [
        draft("c", 0, other_right, True, [2, 2, 2]),
        draft("c", 1, right, True, [2, 2, 2]),
        draft("c", 2, wrong, False, [0, 0, 0]),
    ]
    (fix,) = sibling_local_pairs(drafts, problems, seed=0, keep_share=0.0)
    # the sibling sharing most steps is `right` (1 step in common), so the marker goes on step 1
    assert fix.kind is PairKind.FIX
    assert fix.prompt == local_refine_prompt(q, "\n".join(wrong), 1).prompt
    assert fix.target == "5 + 4 = 9.\nThe answer is 9."


def test_sibling_pairs_need_a_right_sibling_and_add_keeps_at_the_share() -> None:
    lonely = draft("b", 0, ("4 - 1 = 2.", "The answer is 2."), False, [0, 0])
    assert sibling_local_pairs([lonely], PROBLEMS, seed=0, keep_share=0.0) == []
    wrong = draft("a", 0, ("2 + 3 = 6.", "The answer is 6."), False, [0, 0])
    drafts = [wrong, GOOD_A, lonely]
    pairs = sibling_local_pairs(drafts, PROBLEMS, seed=0, keep_share=0.5)
    kinds = [p.kind for p in pairs]
    assert kinds == [PairKind.FIX, PairKind.KEEP]
    # nothing in common with the right draft: the critique goes on the first step and the
    # target is the whole right solution
    assert (
        pairs[0].prompt
        == local_refine_prompt(PROBLEMS["a"].question, "\n".join(wrong.steps), 0).prompt
    )
    assert pairs[0].target == "\n".join(GOOD_A.steps)
