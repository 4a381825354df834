"""The step checker on hand-built candidates: exact labels for right, wrong and malformed steps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.tasks import Problem, TaskConfig, check_solution, generate_problems
from training.tasks.checker import parse_equations, stated_result

PROBLEM = Problem(
    id="hand-1",
    question=(
        "Tom has 5 apples. Tom buys 7 more apples. Mia has 3 times as many apples as Tom. "
        "Mia gives away 6 apples. How many apples does Mia have now?"
    ),
    steps=(
        "Tom now has 5 + 7 = 12 apples.",
        "Mia has 12 * 3 = 36 apples.",
        "Mia now has 36 - 6 = 30 apples.",
        "The answer is 30.",
    ),
    answer="30",
    step_values=("12", "36", "30", None),
    source="synthetic",
    step_ops=("+", "*", "-", None),
    step_operands=(("5", "7"), ("12", "3"), ("36", "6"), None),
)
REF = list(PROBLEM.steps)


def test_reference_solution_is_fully_correct() -> None:
    check = check_solution(PROBLEM, PROBLEM.solution)
    assert check.step_ok == (True, True, True, True)
    assert check.prefix_ok == (True, True, True, True)
    assert check.first_error is None
    assert check.answer == "30"
    assert check.answer_correct
    assert check.complete and check.fully_correct


def test_wrong_value_at_step_two_makes_it_the_first_error() -> None:
    candidate = [REF[0], "Mia has 12 * 3 = 35 apples.", "Mia now has 35 - 6 = 29 apples.",
                 "The answer is 29."]  # fmt: skip
    check = check_solution(PROBLEM, candidate)
    assert check.step_ok == (True, False, False, False)
    assert check.prefix_ok == (True, False, False, False)
    assert check.first_error == 1
    assert check.answer == "29"
    assert not check.answer_correct
    assert not check.fully_correct


def test_a_later_right_step_after_an_error_is_ok_but_its_prefix_is_not() -> None:
    candidate = [REF[0], "Mia has 12 * 3 = 38 apples.", REF[2], REF[3]]
    check = check_solution(PROBLEM, candidate)
    assert check.step_ok == (True, False, True, True)
    assert check.prefix_ok == (True, False, False, False)
    assert check.first_error == 1
    assert check.answer_correct


def test_wrong_arithmetic_is_not_ok() -> None:
    check = check_solution(PROBLEM, ["Tom now has 5 + 7 = 13 apples.", *REF[1:]])
    assert check.step_ok == (False, True, True, True)
    assert check.first_error == 0


@pytest.mark.parametrize(
    "step",
    [
        "Tom now has 7 + 5 = 12 apples.",  # + is order-insensitive
        "Tom now has 5+7=12 apples.",
        "So 5 + 7 = 12, and that is what Tom has.",
        "Tom now has $5 + $7 = $12.",
        "Tom now has 5.0 + 7 = 12.00 apples.",
    ],
)
def test_first_step_variants_with_the_right_operands_and_value_are_ok(step: str) -> None:
    assert check_solution(PROBLEM, [step, *REF[1:]]).step_ok[0]


@pytest.mark.parametrize(
    "step",
    ["Mia has 3 * 12 = 36 apples.", "Mia has 12 x 3 = 36.", "Mia has 12 × 3 = 36.",
     "Mia has 12 X 3 = 36.", "Mia has 12*3 = 36 apples."],
)  # fmt: skip
def test_times_may_be_written_several_ways(step: str) -> None:
    assert check_solution(PROBLEM, [REF[0], step, *REF[2:]]).step_ok[1]


@pytest.mark.parametrize(
    "step",
    [
        "Mia now has 6 - 36 = 30 apples.",  # − is order-sensitive
        "Mia now has 36 + 6 = 30 apples.",  # wrong operation
        "Mia now has 36 - 5 = 30 apples.",  # wrong operand
        "Mia now has 30 apples.",  # no equation
        "Mia now has 36 - 6 = 30 apples, so 30 + 0 = 30.",  # two equations in one step
        "",  # empty step
    ],
)
def test_third_step_variants_that_are_not_ok(step: str) -> None:
    check = check_solution(PROBLEM, [*REF[:2], step, REF[3]])
    assert check.step_ok == (True, True, False, True)
    assert check.first_error == 2


def test_unicode_minus_is_read_as_minus() -> None:
    assert check_solution(PROBLEM, [*REF[:2], "Mia now has 36 − 6 = 30 apples.", REF[3]]).step_ok[2]


def test_commas_and_division_signs_are_read() -> None:
    problem = Problem(
        id="hand-2",
        question="Ann has 1,200 coins and splits them into 4 bags. Then she adds 34.",
        steps=("Ann has 1200 / 4 = 300 coins.", "Ann now has 300 + 34 = 334 coins.",
               "The answer is 334."),
        answer="334",
        step_values=("300", "334", None),
        source="synthetic",
        step_ops=("/", "+", None),
        step_operands=(("1200", "4"), ("300", "34"), None),
    )  # fmt: skip
    for first in ("Ann has 1,200 / 4 = 300 coins.", "1,200 ÷ 4 = 300", "$1,200/4 = $300"):
        check = check_solution(problem, [first, "300 + 34 = 334", "#### 334"])
        assert check.step_ok == (True, True, True), first
        assert check.answer == "334"
    assert not check_solution(problem, ["4 / 1,200 = 300"]).step_ok[0]


def test_fewer_steps_than_the_reference_are_judged_but_incomplete() -> None:
    check = check_solution(PROBLEM, REF[:2])
    assert check.step_ok == (True, True)
    assert check.first_error is None
    assert check.answer is None
    assert not check.answer_correct
    assert not check.complete and not check.fully_correct


def test_extra_steps_past_the_reference_are_not_ok() -> None:
    check = check_solution(PROBLEM, [*REF, "The answer is 30."])
    assert check.step_ok == (True, True, True, True, False)
    assert check.first_error == 4
    assert check.answer_correct  # the stated answer is still right
    assert not check.fully_correct


def test_an_early_answer_in_place_of_a_step_is_not_ok() -> None:
    check = check_solution(PROBLEM, [REF[0], "The answer is 30."])
    assert check.step_ok == (True, False)
    assert check.first_error == 1
    assert check.answer_correct


def test_a_solution_without_a_final_answer_has_answer_none() -> None:
    check = check_solution(PROBLEM, REF[:3])
    assert check.step_ok == (True, True, True)
    assert check.answer is None and not check.answer_correct


def test_a_wrong_or_non_numeric_final_answer_is_not_ok() -> None:
    assert check_solution(PROBLEM, [*REF[:3], "The answer is 31."]).step_ok[3] is False
    check = check_solution(PROBLEM, [*REF[:3], "The answer is thirty."])
    assert check.step_ok[3] is False
    assert check.answer is None


@pytest.mark.parametrize("candidate", ["", "   \n \n", [], ()])
def test_empty_candidates_give_a_defined_empty_verdict(candidate: str | list[str]) -> None:
    check = check_solution(PROBLEM, candidate)
    assert check.step_ok == () and check.prefix_ok == ()
    assert check.first_error is None
    assert check.answer is None and not check.answer_correct
    assert not check.fully_correct


def test_unicode_text_is_judged_without_crashing() -> None:
    candidate = ["Tom 🍎 now has 5 + 7 = 12 pommes 🍏.", "Mía tiene １２ × ３ = ３６.", "ñ", REF[3]]
    check = check_solution(PROBLEM, candidate)
    # Full-width digits are not numbers to the text contract, so step 1 has no equation.
    assert check.step_ok == (True, False, False, True)


def test_a_string_candidate_is_split_into_steps() -> None:
    check = check_solution(PROBLEM, "\n".join(REF) + "\n\n")
    assert len(check.step_ok) == 4 and check.fully_correct


def test_non_text_candidates_raise_a_type_error_naming_the_problem() -> None:
    with pytest.raises(TypeError, match="candidate must be"):
        check_solution(PROBLEM, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="candidate step 1 must be a string"):
        check_solution(PROBLEM, ["a", 3])  # type: ignore[list-item]


def test_gsm8k_steps_are_checked_by_value() -> None:
    problem = Problem(
        id="gsm8k-x-1",
        question="Janet has 16 eggs, eats 3 and bakes with 4, and sells the rest for $2 each.",
        steps=("Janet sells 16 - 3 - 4 = 9 duck eggs a day.", "She makes 9 * 2 = $18 every day.",
               "She is happy.", "The answer is 18."),
        answer="18",
        step_values=("9", "18", None, None),
        source="gsm8k",
    )  # fmt: skip
    right = ["16 - 7 = 9 eggs are sold.", "So she makes 18 dollars.", "anything", "#### 18"]
    assert check_solution(problem, right).step_ok == (True, True, True, True)
    wrong = ["16 - 3 - 4 = 10 eggs.", "9 * 2 = 18", "x", "The answer is 18."]
    check = check_solution(problem, wrong)
    assert check.step_ok == (False, True, True, True)
    assert check.first_error == 0


def test_parse_equations_and_stated_result_read_exact_numbers() -> None:
    (eq,) = parse_equations("He has $1,234.50 + 5 = $1,239.5 now.")
    assert (eq.a, eq.op.value, eq.b, eq.c) == ("1234.5", "+", "5", "1239.5")
    assert parse_equations("no numbers here") == []
    assert stated_result("2L = 22 - 8 = 14") == "14"
    assert stated_result("because 2 times 5 equals 10.") == "10"
    assert stated_result("nothing") is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), data=st.data())
def test_changing_one_result_makes_that_step_the_first_error(
    seed: int, data: st.DataObject
) -> None:
    (problem,) = generate_problems(TaskConfig.medium(), 1, seed)
    i = data.draw(st.integers(0, len(problem.steps) - 2))
    value = problem.step_values[i]
    assert value is not None
    steps = list(problem.steps)
    steps[i] = steps[i].replace(f"= {value} ", f"= {int(value) + 1} ")
    check = check_solution(problem, steps)
    assert check.step_ok[:i] == (True,) * i
    assert check.step_ok[i] is False
    assert check.first_error == i


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300) | st.lists(st.text(max_size=60), max_size=8))
def test_any_text_gets_a_consistent_verdict(text: str | list[str]) -> None:
    check = check_solution(PROBLEM, text)
    n = len(check.step_ok)
    assert len(check.prefix_ok) == n
    assert check.first_error is None or 0 <= check.first_error < n
    assert check.prefix_ok == tuple(all(check.step_ok[: i + 1]) for i in range(n))


def test_a_continuation_is_consistent_only_if_it_uses_the_steps_stated_result() -> None:
    from engines.base import Completion
    from training.rollouts import count_successes
    from training.tasks.checker import uses_result

    assert uses_result(REF[1], REF[2:])  # "36 - 6 = 30" uses 36
    # right answer, but recomputed from scratch around the prefix's (wrong) 35
    assert not uses_result("Mia has 12 * 3 = 35 apples.", ["Mia now has 30 apples.",
                                                          "The answer is 30."])  # fmt: skip
    assert uses_result("Mia has some apples.", ["The answer is 30."])  # nothing to check
    prefix = [REF[0], "Mia has 12 * 3 = 35 apples."]
    conts = [
        Completion("Mia now has 36 - 6 = 30 apples.\nThe answer is 30.", 9, "stop"),
        Completion("Mia now has 35 - 5 = 30 apples.\nThe answer is 30.", 9, "stop"),
        Completion("Mia now has 35 - 6 = 29 apples.\nThe answer is 29.", 9, "stop"),
    ]
    s = count_successes(PROBLEM, prefix, conts)
    assert (s.hits, s.consistent) == (2, 1)
    assert s.example == "Mia now has 35 - 5 = 30 apples.\nThe answer is 30."  # the consistent one
    assert [(ok, used) for _, ok, used in s.samples] == [(True, False), (True, True),
                                                         (False, False)]  # fmt: skip
