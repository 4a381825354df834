"""The tokenizer of the wide recipe: byte-level BPE trained on the wide task's training text
turns a name it never saw into a few subword pieces, not a string of characters."""

from __future__ import annotations

import statistics

import pytest

from training.config import load_config
from training.stages.data import _corpus
from training.tasks import TaskConfig, generate_problems
from training.tasks.words import HELDOUT_NAMES, HELDOUT_OBJECTS
from training.tokenizer import build_tokenizer


def _pieces(tok, words) -> list[int]:  # type: ignore[no-untyped-def]
    # As a name stands in a sentence: after a space.
    return [len(tok(f" {w}", add_special_tokens=False)["input_ids"]) for w in words]


@pytest.fixture(scope="module")
def wide_tokenizer():  # type: ignore[no-untyped-def]
    cfg = load_config(preset="tiny")
    task = TaskConfig.from_dict(cfg.data.task)
    corpus = _corpus(generate_problems(task, 2000, seed=0))
    return build_tokenizer(corpus, vocab_size=cfg.model.vocab_size)


def test_an_unseen_name_becomes_a_few_subword_pieces(wide_tokenizer) -> None:  # type: ignore[no-untyped-def]
    names = _pieces(wide_tokenizer, HELDOUT_NAMES)
    chars = [len(w) + 1 for w in HELDOUT_NAMES]
    assert statistics.mean(names) <= 3.6  # measured 3.3 at 8,000 questions
    assert max(names) <= 6  # one long name ("Beatrice") takes 6 since the lists changed
    assert statistics.mean(names) < 0.65 * statistics.mean(chars)
    objects = _pieces(wide_tokenizer, HELDOUT_OBJECTS)
    assert statistics.mean(objects) <= 4.2


def test_the_narrow_tiny_corpus_leaves_unseen_names_in_more_pieces(wide_tokenizer) -> None:  # type: ignore[no-untyped-def]
    tiny = load_config(preset="tiny-narrow")
    corpus = _corpus(generate_problems(TaskConfig.from_dict(tiny.data.task), 2000, seed=0))
    narrow = build_tokenizer(corpus, vocab_size=tiny.model.vocab_size)
    wide = statistics.mean(_pieces(wide_tokenizer, HELDOUT_NAMES))
    assert statistics.mean(_pieces(narrow, HELDOUT_NAMES)) > wide + 0.5


def test_the_wide_tokenizer_decodes_every_question_exactly(wide_tokenizer) -> None:  # type: ignore[no-untyped-def]
    task = TaskConfig.wide().held_out("heldout_names")
    for p in generate_problems(task, 50, seed=1):
        ids = wide_tokenizer(p.question, add_special_tokens=False)["input_ids"]
        assert wide_tokenizer.decode(ids) == p.question
