"""The wide synthetic task: hundreds of words, pronouns, synonyms and combined clauses, every
reference still exactly checkable, and held-out names, objects and phrasings that training
data never contains."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest

from training.tasks import TaskConfig, check_solution, generate_problems
from training.tasks.synthetic import NAMES, OBJECTS
from training.tasks.wide import TABLES, Phrase
from training.tasks.words import (
    HELDOUT_NAMES,
    HELDOUT_OBJECTS,
    PEOPLE,
    TRAIN_NAMES,
    TRAIN_OBJECTS,
)

WIDE = TaskConfig.wide()


@pytest.fixture(scope="module")
def train() -> list:
    return generate_problems(WIDE, 1500, seed=0)


@pytest.fixture(scope="module")
def heldout_templates() -> list:
    return generate_problems(WIDE.held_out("heldout_templates"), 1500, seed=0)


def _object(problem) -> str:  # type: ignore[no-untyped-def]
    return problem.steps[0].rstrip(".").split()[-1]


def _pattern(phrase: Phrase) -> re.Pattern[str]:
    """A phrasing as a regex over questions: its words literal, each placeholder any text."""
    parts = re.split(r"\{\w+\}", phrase.text)
    return re.compile("[^.?]+?".join(re.escape(p) for p in parts), re.IGNORECASE)


def test_the_word_lists_have_hundreds_of_names_and_objects_and_hold_some_out() -> None:
    assert len(TRAIN_NAMES) >= 200 and len(TRAIN_OBJECTS) >= 100
    assert len(HELDOUT_NAMES) >= 40 and len(HELDOUT_OBJECTS) >= 20
    assert not set(TRAIN_NAMES) & set(HELDOUT_NAMES)
    assert not set(TRAIN_OBJECTS) & set(HELDOUT_OBJECTS)
    # Every word of the basic generator is in the wide lists too.
    assert set(NAMES) <= set(PEOPLE) and set(OBJECTS) <= set(TRAIN_OBJECTS + HELDOUT_OBJECTS)


def test_training_problems_never_name_a_held_out_name_or_object(train: list) -> None:
    held_names, held_objects = set(HELDOUT_NAMES), set(HELDOUT_OBJECTS)
    objects, names = set(), set()
    for p in train:
        text = " ".join([p.question, *p.steps])
        tokens = set(re.findall(r"[A-Za-z]+", text))
        assert not tokens & held_names, p.question
        assert not tokens & held_objects, p.question
        objects.add(_object(p))
        names |= tokens & set(PEOPLE)
    assert len(names) >= 200 and len(objects) >= 100  # hundreds of them, really used


def test_held_out_names_problems_use_only_held_out_names_and_objects() -> None:
    for p in generate_problems(WIDE.held_out("heldout_names"), 300, seed=1):
        assert _object(p) in HELDOUT_OBJECTS
        names = set(re.findall(r"[A-Z][a-z]+", p.question)) & set(PEOPLE)
        assert names and names <= set(HELDOUT_NAMES), p.question
        assert check_solution(p, p.solution).fully_correct


def test_held_out_phrasings_never_appear_in_training_and_all_appear_in_their_split(
    train: list, heldout_templates: list
) -> None:
    for name, table in TABLES.items():
        assert table.heldout, name
        assert not {p.text for p in table.train} & {p.text for p in table.heldout}
        for phrase in table.heldout:
            pattern = _pattern(phrase)
            assert not any(pattern.search(p.question) for p in train), (name, phrase.text)
            assert any(pattern.search(p.question) for p in heldout_templates), (name, phrase.text)


def test_every_reference_checks_fully_correct_in_every_part(
    train: list, heldout_templates: list
) -> None:
    for p in [*train, *heldout_templates]:
        check = check_solution(p, p.solution)
        assert check.fully_correct, p.question


def test_the_phrasings_people_use_all_occur(train: list) -> None:
    text = " ".join(p.question for p in train)
    for words in (
        "twice as many", "double", "triples", "half", "in total", "altogether",
        " of them to ", " and then ", "Compared with", "fewer", " boxes of ", "bought",
        "He bought ", "She bought ",
    ):  # fmt: skip
        assert words in text, words


def test_a_pronoun_refers_to_the_person_the_step_is_about(train: list) -> None:
    asked_by_pronoun = 0
    for p in train:
        ask = p.question.rsplit(". ", 1)[-1]
        pronoun = next((w for w in ("he", "she") if f" {w} " in f" {ask} "), None)
        if pronoun is None:
            continue
        asked_by_pronoun += 1
        who = p.steps[-2].split()[0]  # the last step's person is the one asked about
        assert PEOPLE[who] == pronoun, p.question
        assert who in p.question  # named before the pronoun stands for them
    assert asked_by_pronoun >= 100
    sentence_pronouns = sum(bool(re.search(r"(^|\. )(He|She) ", p.question)) for p in train)
    assert sentence_pronouns >= 200


def test_the_checker_catches_a_wrong_step_in_a_pronoun_question(train: list) -> None:
    p = next(p for p in train if re.search(r"\. (He|She) ", p.question))
    a, b = p.step_operands[0] or ("", "")
    wrong = [p.steps[0].replace(f"= {p.step_values[0]} ", f"= {int(p.step_values[0] or 0) + 1} "),
             *p.steps[1:]]  # fmt: skip
    check = check_solution(p, wrong)
    assert a and b and check.first_error == 0 and not check.step_ok[0]
    assert check.step_ok[1:-1] == (True,) * (len(p.steps) - 2)


def test_two_steps_can_share_one_sentence(train: list) -> None:
    # After the opening (which may join groups and an update: see the next test).
    shared = [p for p in train if re.search(r"( and|,) then ", p.question.split(". ", 1)[1])]
    assert len(shared) >= 100
    for p in shared:
        # One sentence, two updates of its subject: two consecutive "X now has" steps.
        people = [s.split()[0] if " now has " in s else None for s in p.steps[:-1]]
        assert any(a is not None and a == b for a, b in itertools.pairwise(people)), p.question


def test_the_wide_task_is_deterministic_and_prefix_stable() -> None:
    assert generate_problems(WIDE, 40, seed=2) == generate_problems(WIDE, 40, seed=2)
    assert generate_problems(WIDE, 10, seed=2) == generate_problems(WIDE, 40, seed=2)[:10]
    a = {p.question for p in generate_problems(WIDE, 300, seed=3)}
    assert len(a) == 300


def test_the_basic_family_holds_out_the_words_past_its_bounds() -> None:
    tiny = TaskConfig.tiny()
    for p in generate_problems(tiny.held_out("heldout_names"), 100, seed=0):
        assert _object(p) in OBJECTS[tiny.n_objects :]
        names = set(re.findall(r"[A-Z][a-z]+", p.question)) & set(NAMES)
        assert names and names <= set(NAMES[tiny.n_names :])
    for p in generate_problems(tiny, 100, seed=0):
        names = set(re.findall(r"[A-Z][a-z]+", p.question)) & set(NAMES)
        assert names <= set(NAMES[: tiny.n_names])
    with pytest.raises(ValueError, match="none is left to hold out"):
        generate_problems(TaskConfig.easy().held_out("heldout_templates"), 1, seed=0)


def test_groups_and_an_update_can_share_the_opening_sentence(train: list) -> None:
    # The unseen-name question of docs/deployment.md has this shape: "Ann has 3 boxes of 12
    # pencils and gives away 5".
    joined = [p for p in train if re.match(r"[A-Z][a-z]+ (has|buys) \d+ \w+ of \d+ \w+(,| and) ",
                                           p.question)]  # fmt: skip
    assert len(joined) >= 10
    for p in joined:
        who = p.question.split()[0]
        assert p.steps[0].startswith(f"{who} has ") and p.step_ops[0] == "*"
        assert p.steps[1].startswith(f"{who} now has ")
        assert check_solution(p, p.solution).fully_correct


# ------------------------------------------------------------------ made-up and everyday words


def _words(problem) -> set[str]:  # type: ignore[no-untyped-def]
    return set(re.findall(r"[A-Za-z]+", " ".join([problem.question, *problem.steps])))


def test_the_everyday_words_a_new_user_tries_are_never_held_out() -> None:
    from training.tasks.words import COMMON_NAMES, COMMON_OBJECTS

    assert set(TRAIN_NAMES) >= COMMON_NAMES and set(TRAIN_OBJECTS) >= COMMON_OBJECTS
    for word in ("Tom", "Sara", "apples", "marbles", "cookies", "pencils", "books"):
        assert word in COMMON_NAMES | COMMON_OBJECTS


def test_made_up_words_fill_their_share_of_training_and_never_the_held_out_part() -> None:
    from training.tasks.words import OBJECTS as REAL_OBJECTS

    real = set(PEOPLE) | set(REAL_OBJECTS)
    cfg = dataclasses.replace(WIDE, pseudo_share=0.5)
    train = generate_problems(cfg, 600, seed=3)
    made_up = [p for p in train if _object(p) not in real]
    assert 0.4 < len(made_up) / len(train) < 0.6
    train_made_up = set().union(*(_words(p) for p in made_up)) - set(WORDS_OF_TEMPLATES)
    evaluated = generate_problems(WIDE.held_out("made_up"), 300, seed=4)
    for p in evaluated:
        assert check_solution(p, p.steps).fully_correct
        assert _object(p) not in real
        assert not (_words(p) - set(WORDS_OF_TEMPLATES)) & train_made_up, p.question
    # The held-out part of the made-up words is its own: the same problem index, other words.
    assert {_object(p) for p in evaluated}.isdisjoint({_object(p) for p in made_up})


def test_made_up_words_keep_the_problem_and_change_only_its_words() -> None:
    cfg = dataclasses.replace(WIDE, pseudo_share=1.0)
    for plain, made_up in zip(
        generate_problems(WIDE, 50, seed=8), generate_problems(cfg, 50, seed=8), strict=True
    ):
        assert plain.step_values == made_up.step_values and plain.answer == made_up.answer
        assert plain.step_ops == made_up.step_ops


def test_splits_keep_made_up_words_out_of_test_and_validation() -> None:
    from training.tasks import make_splits
    from training.tasks.words import OBJECTS as REAL_OBJECTS

    cfg = dataclasses.replace(WIDE, pseudo_share=0.5)
    splits = make_splits(cfg, seed=0, n_train=200, n_val=50, n_test=50)
    assert all(_object(p) in REAL_OBJECTS for p in (*splits.val, *splits.test))
    assert any(_object(p) not in REAL_OBJECTS for p in splits.train)


def test_an_amount_and_an_update_can_share_the_opening_sentence(train: list) -> None:
    pattern = re.compile(r"^[A-Z]\w+ (has|had) \d+ \w+ and (buys|gets|loses|eats|gives) \d+")
    joined = [p for p in train if pattern.match(p.question)]
    assert joined, "no 'Tom has 3 apples and buys 4 more' opening"
    for p in joined:
        assert check_solution(p, p.steps).fully_correct


def test_the_basic_family_refuses_made_up_words() -> None:
    with pytest.raises(ValueError, match="made-up"):
        generate_problems(TaskConfig.easy().held_out("made_up"), 1, seed=0)
    with pytest.raises(ValueError, match="pseudo_share"):
        dataclasses.replace(TaskConfig.easy(), pseudo_share=0.5)


# Every word the phrasing tables and reference steps may use (not names or objects).
WORDS_OF_TEMPLATES = {
    w
    for table in TABLES.values()
    for phrase in (*table.train, *table.heldout)
    for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", phrase.text))
} | {"now", "has", "have", "The", "answer", "is", "and", "he", "she", "his", "her", "He", "She",
     "His", "Her", "boxes", "bags", "packs", "jars", "crates", "baskets", "twice", "three",
     "four", "five", "six", "times", "half", "a", "third", "quarter", "fifth", "sixth", "seventh",
     "an", "eighth", "ninth", "tenth"}  # fmt: skip
