"""Fixed, disjoint train/validation/test splits: no question (up to case, spacing and Unicode
form) appears in two splits, or twice in one.
"""

from __future__ import annotations

import dataclasses
import random
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from training.tasks.synthetic import generate_problem
from training.tasks.types import Problem, TaskConfig


def canonical_question(question: str) -> str:
    """The form under which two questions count as the same: NFKC, casefolded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", question).casefold().split())


@dataclass(frozen=True)
class Splits:
    train: tuple[Problem, ...]
    val: tuple[Problem, ...]
    test: tuple[Problem, ...]

    def __iter__(self) -> Iterator[tuple[str, tuple[Problem, ...]]]:
        yield from (("train", self.train), ("val", self.val), ("test", self.test))


def _unique(problems: Iterable[Problem]) -> Iterator[Problem]:
    seen: set[str] = set()
    for p in problems:
        key = canonical_question(p.question)
        if key not in seen:
            seen.add(key)
            yield p


def make_splits(config: TaskConfig, seed: int, n_train: int, n_val: int, n_test: int) -> Splits:
    """Synthetic splits from the problem stream `seed`, duplicates (by question) dropped.

    The stream fills test first, then val, then train, so asking for more training data never
    changes the test or validation problems. Made-up words (`config.pseudo_share`) go into the
    training split only: test and validation measure the words people write. Raises ValueError
    when the config cannot yield enough distinct questions.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    total = n_train + n_val + n_test
    budget = 4 * total + 1000  # a config this tight would mostly repeat itself anyway

    held = dataclasses.replace(config, pseudo_share=0.0)
    unique: list[Problem] = []

    def stream() -> Iterator[Problem]:
        for index in range(budget):
            # Every problem's words are drawn apart from its structure, so this choice changes
            # words only: the splits' questions keep their places in the stream.
            yield generate_problem(held if len(unique) < n_test + n_val else config, seed, index)

    for p in _unique(stream()):
        unique.append(p)
        if len(unique) == total:
            break
    if len(unique) < total:
        raise ValueError(
            f"TaskConfig {config.name!r} gave only {len(unique)} distinct questions in "
            f"{budget} tries, {total} wanted; widen its ranges or ask for fewer"
        )
    return Splits(
        test=tuple(unique[:n_test]),
        val=tuple(unique[n_test : n_test + n_val]),
        train=tuple(unique[n_test + n_val :]),
    )


def split_problems(problems: Iterable[Problem], seed: int, n_val: int, n_test: int) -> Splits:
    """Split given problems (e.g. GSM8K train) into disjoint train/val/test by a seeded shuffle.

    Duplicate questions are dropped (the first occurrence is kept) before shuffling.
    """
    unique = list(_unique(problems))
    if n_val < 0 or n_test < 0 or n_val + n_test > len(unique):
        raise ValueError(
            f"n_val={n_val} and n_test={n_test} must be >= 0 and fit in {len(unique)} problems"
        )
    random.Random(seed).shuffle(unique)
    return Splits(
        test=tuple(unique[:n_test]),
        val=tuple(unique[n_test : n_test + n_val]),
        train=tuple(unique[n_test + n_val :]),
    )
