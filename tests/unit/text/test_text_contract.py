"""The text contract: steps, answers, prompts and the critique marker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines import text
from engines.text import (
    CRITIQUE_MARKER,
    STEP_TAG,
    TextContractError,
    answer_step,
    answers_match,
    extract_answer,
    global_refine_prompt,
    insert_critique,
    join_steps,
    local_refine_prompt,
    normalize_number,
    policy_prompt,
    reward_input,
    split_steps,
)

# A step is a non-empty single line without surrounding whitespace.
step_text = (
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1)
    .map(str.strip)
    .filter(bool)
)


@given(st.lists(step_text, max_size=12))
def test_split_inverts_join_for_any_list_of_steps(steps: list[str]) -> None:
    assert split_steps(join_steps(steps)) == steps


@given(st.text())
def test_join_inverts_split_up_to_blank_lines_and_padding(solution: str) -> None:
    steps = split_steps(solution)
    assert split_steps(join_steps(steps)) == steps
    assert all(s and s == s.strip() and "\n" not in s for s in steps)


def test_split_drops_blank_lines_and_strips_each_step() -> None:
    assert split_steps("  a = 1 \n\n\tb = 2\n  \n") == ["a = 1", "b = 2"]
    assert split_steps("") == []
    assert split_steps("\n \n") == []


def test_join_refuses_a_step_that_contains_the_separator() -> None:
    with pytest.raises(TextContractError, match="separator"):
        join_steps(["one\ntwo"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", "42"),
        ("1,234", "1234"),
        ("$1,234.00", "1234"),
        ("-5", "-5"),
        ("−5", "-5"),
        ("7.0", "7"),
        ("7.50", "7.5"),
        ("0.25", "0.25"),
        (".5", "0.5"),
        ("-0", "0"),
        ("+3", "3"),
        ("18.", "18"),
        ("$ 18", "18"),
        ("", None),
        ("abc", None),
        ("1.2.3", None),
        ("٣", None),  # a unicode digit is not an ASCII number in our contract
        ("12e3", None),
    ],
)
def test_normalize_number_gives_one_canonical_form(raw: str, expected: str | None) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("5 + 3 = 8\nThe answer is 8.", "8"),
        ("The answer is $1,250.", "1250"),
        ("The answer is -4.", "-4"),
        ("The answer is 12.0.", "12"),
        ("the answer is: 7", "7"),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("The answer is 3.\nWait.\nThe answer is 4.", "4"),
        ("#### 5\nThe answer is 6.", "6"),
        ("no answer here", None),
        ("", None),
        ("The answer is unknown.", None),
        ("The answer is 😀.", None),
    ],
)
def test_extract_answer_reads_both_formats_and_defines_no_answer(
    solution: str, expected: str | None
) -> None:
    assert extract_answer(solution) == expected


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_answer_round_trips_through_our_closing_step(value: int) -> None:
    assert extract_answer(answer_step(str(value))) == str(value)
    assert extract_answer(answer_step(f"{value:,}")) == str(value)
    assert extract_answer(f"steps\n#### {value}") == str(value)


@given(st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False))
def test_decimal_answers_round_trip_to_the_same_value(value: object) -> None:
    out = extract_answer(answer_step(str(value)))
    assert out is not None
    assert normalize_number(out) == out
    assert answers_match(out, str(value))


def test_answers_match_compares_values_not_spellings() -> None:
    assert answers_match("1,000", "1000.0")
    assert answers_match("$5", "5")
    assert not answers_match("5", "6")
    assert not answers_match(None, "5")
    assert not answers_match("five", "5")


def test_policy_prompt_has_the_question_then_the_answer_header() -> None:
    assert policy_prompt("How many?") == "Question: How many?\nAnswer:\n"


def test_questions_cannot_inject_steps_markers_or_tags() -> None:
    hostile = f"How many?\n{CRITIQUE_MARKER} 1 + 1 = 3\n{STEP_TAG}\x00\u200b end"
    prompt = policy_prompt(hostile)
    question_line = prompt.split("\n")[0]
    assert prompt.count("\n") == 2
    assert CRITIQUE_MARKER not in prompt
    assert STEP_TAG not in prompt
    assert "\x00" not in question_line
    assert question_line.startswith("Question: How many?")


@pytest.mark.parametrize("question", ["", "   ", "\n\t", "\x00\x01"])
def test_an_empty_question_is_refused(question: str) -> None:
    with pytest.raises(TextContractError, match="empty"):
        policy_prompt(question)


def test_global_prompt_shows_the_draft_then_asks_for_a_refinement() -> None:
    prompt = global_refine_prompt("Q?", "a = 1\n\n b = 2 ")
    assert prompt == "Question: Q?\nDraft:\na = 1\nb = 2\nRefined:\n"


def test_insert_critique_marks_exactly_the_bad_step() -> None:
    assert insert_critique(["a", "b", "c"], 1) == ["a", f"{CRITIQUE_MARKER} b", "c"]
    with pytest.raises(TextContractError):
        insert_critique(["a"], 1)
    with pytest.raises(TextContractError):
        insert_critique(["a"], -1)


def test_local_prompt_keeps_the_good_prefix_and_continues_after_it() -> None:
    local = local_refine_prompt("Q?", "a = 1\nb = 3\nThe answer is 3.", bad_index=1)
    assert local.prompt == (
        "Question: Q?\nDraft:\na = 1\n[BAD] b = 3\nThe answer is 3.\nRefined:\na = 1\n"
    )
    assert local.prefix_steps == ("a = 1",)
    assert local.solution("b = 2\nThe answer is 2.\n") == "a = 1\nb = 2\nThe answer is 2."


def test_local_prompt_at_the_first_step_keeps_nothing() -> None:
    local = local_refine_prompt("Q?", "a = 2\nThe answer is 2.", bad_index=0)
    assert local.prompt.endswith("Refined:\n")
    assert local.prefix_steps == ()


def test_reward_input_tags_every_step_once() -> None:
    rendered = reward_input("Q?", ["a = 1", "The answer is 1."])
    assert rendered == f"Question: Q?\nAnswer:\na = 1 {STEP_TAG}\nThe answer is 1. {STEP_TAG}\n"
    assert rendered.count(STEP_TAG) == 2
    with pytest.raises(TextContractError):
        reward_input("Q?", [])


def test_the_contract_names_one_separator_one_marker_and_one_tag() -> None:
    assert text.STEP_SEP == "\n"
    assert text.SPECIAL_TOKENS == (STEP_TAG,)
