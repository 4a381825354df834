"""The question profile: reading a question's tokens, choosing thresholds on validation, and
the warnings a question earns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.text import policy_prompt, question_in_prompt
from service.profile import (
    PROFILE_FILE,
    QuestionProfile,
    QuestionReading,
    Thresholds,
    WarningCode,
    check,
    choose_thresholds,
    mean_question_logprob,
    read_profile,
    read_questions,
    read_tokens,
    words,
)
from tests.support.fakes import FakeGenerator, constant
from training.tokenizer import build_tokenizer

TRAIN = [
    "Ben has 3 apples. Ben buys 4 more apples. How many apples does Ben have?",
    "Ann has 12 pens. Ann gives away 5 pens. How many pens are left?",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([policy_prompt(q) for q in TRAIN], vocab_size=300)


def reading(tokens: int = 20, unseen: int = 0, lp: float | None = -1.0) -> QuestionReading:
    return QuestionReading(tokens, unseen, ("Zyx",) * bool(unseen), lp)


def profile(**thresholds: float) -> QuestionProfile:
    t = {"unseen_share": 0.2, "max_tokens": 30, "mean_logprob": -3.0, **thresholds}
    return QuestionProfile(
        known_words=["Ben"], thresholds=Thresholds.model_validate(t), false_alarm_rate=0.01
    )


def test_the_question_part_of_the_prompt_tokenises_as_inside_the_policy_prompt(tokenizer) -> None:
    q = "Ben has 3 apples. How many apples does Ben have?"
    head, text = question_in_prompt(q)
    whole = tokenizer.encode(policy_prompt(q), add_special_tokens=False)
    parts = tokenizer.encode(head, add_special_tokens=False) + tokenizer.encode(
        text, add_special_tokens=False
    )
    assert whole[: len(parts)] == parts


def test_read_tokens_counts_the_pieces_of_words_unseen_in_training(tokenizer) -> None:
    known = frozenset(w for q in TRAIN for w in words(q))
    seen = read_tokens("Ben has 3 apples. How many apples does Ben have?", tokenizer, known)
    assert seen.unseen_tokens == 0 and seen.unseen_words == () and seen.tokens > 5
    question = "Xochitl has 3 kumquats. How many kumquats?"
    odd = read_tokens(question, tokenizer, known)
    assert odd.unseen_words == ("Xochitl", "kumquats")
    # an unseen word falls apart into several pieces, every one of them counted
    assert odd.unseen_tokens >= 4 and odd.unseen_share > 0.3
    text = question_in_prompt(question)[1]
    assert odd.tokens == len(tokenizer.encode(text, add_special_tokens=False))


async def test_read_questions_takes_the_policy_likelihood_of_the_question_tokens(
    tokenizer,
) -> None:
    policy = FakeGenerator("policy", constant("Ben has"))
    [r] = await read_questions(["Ben has 3 apples."], tokenizer, frozenset(), policy)
    [[request]] = policy.read_calls
    assert (request.prompt, request.completion) == question_in_prompt("Ben has 3 apples.")
    # the fake reads -1 for its own words, -5 for others, and -1 for the EOS that is left out
    assert r.mean_logprob == pytest.approx((-1 - 1 - 5 - 5) / 4)
    assert mean_question_logprob([-2.0, -4.0, -100.0]) == -3.0


def test_thresholds_flag_at_most_the_false_alarm_share_of_validation() -> None:
    val = [reading(lp=-1.0 - i / 100, unseen=i % 7) for i in range(100)]
    train = [reading(tokens=t) for t in (10, 42, 17)]
    t = choose_thresholds(train, val, false_alarm_rate=0.05, min_unseen_share=0.0)
    assert t.max_tokens == 42
    p = QuestionProfile(known_words=[], thresholds=t, false_alarm_rate=0.05)
    for code in (WarningCode.UNSEEN_WORDS, WarningCode.UNLIKELY_QUESTION):
        flagged = sum(any(w.code is code for w in check(r, p)) for r in val)
        assert flagged <= 5, code
    # the least likely validation questions are the ones flagged
    assert check(reading(lp=-1.99), p) and not check(reading(lp=-1.5), p)


def test_the_unseen_share_threshold_never_drops_below_its_floor() -> None:
    val = [reading(unseen=0) for _ in range(50)]  # no validation question has an unseen word
    t = choose_thresholds([reading()], val, false_alarm_rate=0.01, min_unseen_share=0.25)
    assert t.unseen_share == 0.25
    with pytest.raises(ValueError, match="training and validation"):
        choose_thresholds([], val, false_alarm_rate=0.01, min_unseen_share=0.1)
    with pytest.raises(ValueError, match="likelihood"):
        choose_thresholds([reading()], [reading(lp=None)], false_alarm_rate=0.1, min_unseen_share=0)


def test_check_warns_on_each_sign_and_is_silent_on_a_typical_question() -> None:
    p = profile()
    assert check(reading(), p) == []
    assert [w.code for w in check(reading(unseen=10), p)] == [WarningCode.UNSEEN_WORDS]
    assert [w.code for w in check(reading(tokens=31), p)] == [WarningCode.LONGER_THAN_TRAINING]
    [unlikely] = check(reading(lp=-4.5), p)
    assert unlikely.code is WarningCode.UNLIKELY_QUESTION and "-4.50" in unlikely.message
    everything = check(QuestionReading(40, 30, ("Zyx",), -9.0), p)
    assert [w.code for w in everything] == list(WarningCode)
    assert "30 of 40 tokens" in everything[0].message and "'Zyx'" in everything[0].message


def test_read_profile_is_none_without_a_file_and_names_a_broken_one(tmp_path: Path) -> None:
    assert read_profile(tmp_path) is None
    (tmp_path / PROFILE_FILE).write_text(profile().model_dump_json())
    loaded = read_profile(tmp_path)
    assert loaded is not None and loaded.thresholds.max_tokens == 30
    (tmp_path / PROFILE_FILE).write_text(json.dumps({"known_words": []}))
    with pytest.raises(ValueError, match=PROFILE_FILE):
        read_profile(tmp_path)


def test_the_app_warns_counts_and_answers_the_same_and_a_failed_check_costs_nothing(
    tokenizer, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from glore.app import create_app
    from service.settings import Settings
    from tests.support.fakes import make_engines

    only_unseen = profile(max_tokens=100, mean_logprob=-10.0)  # the fake policy reads -5 a word
    (tmp_path / PROFILE_FILE).write_text(only_unseen.model_dump_json())
    odd = "Xochitl has 3 kumquats. How many kumquats?"
    bodies = []
    for tok in (tokenizer, None, "not a tokenizer"):
        app = create_app(Settings(run_dir=tmp_path), make_engines())
        app.state.glore.question_tokenizer = tok  # what the model loader sets from the policy
        with TestClient(app) as client:
            r = client.post("/solve", json={"question": odd})
            assert r.status_code == 200, r.text
            bodies.append(r.json())
            metrics = client.get("/metrics").text
        if tok is tokenizer:
            assert [w["code"] for w in bodies[-1]["warnings"]] == ["unseen_words"]
            assert 'glore_warnings_total{code="unseen_words"} 1.0' in metrics
        else:  # no tokenizer, or a check that breaks: no warnings, the same answer
            assert bodies[-1]["warnings"] == []
    for key in ("answer", "solution", "winner", "candidates", "decision"):
        assert bodies[0][key] == bodies[1][key] == bodies[2][key], key
