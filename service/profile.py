"""The run's question profile and the warnings it gives when a question is beyond the models.

`glore train profile` measures the training and validation questions and writes
RUN/question_profile.json: the words seen in training, the longest training question, and
thresholds chosen on validation. `glore serve` reads every question the same way and warns when
a large share of its tokens are pieces of unseen words, when it is longer than any training
question, or when the policy's per-token likelihood of it is below what validation questions
reach. Warnings never change the answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from engines.base import Generator, LikelihoodRequest
from engines.text import question_in_prompt

PROFILE_FILE = "question_profile.json"
PROFILE_VERSION = 1
# A word is a run of letters (any script); digits and punctuation are never "unseen".
_WORD = re.compile(r"[^\W\d_]+")


class WarningCode(StrEnum):
    UNSEEN_WORDS = "unseen_words"
    LONGER_THAN_TRAINING = "longer_than_training"
    UNLIKELY_QUESTION = "unlikely_question"


@dataclass(frozen=True)
class QuestionWarning:
    code: WarningCode
    message: str


class Thresholds(BaseModel):
    """Where warnings start; `glore train profile` chooses them (see `choose_thresholds`)."""

    unseen_share: float = Field(
        ge=0, le=1, description="Warn when more than this share of tokens are unseen-word pieces."
    )
    max_tokens: int = Field(ge=1, description="Warn above this many tokens (longest in training).")
    mean_logprob: float = Field(
        description="Warn when the policy's mean log-probability per question token is below."
    )


class QuestionProfile(BaseModel):
    """RUN/question_profile.json."""

    version: int = PROFILE_VERSION
    known_words: list[str] = Field(description="Every word of the training questions/solutions.")
    thresholds: Thresholds
    false_alarm_rate: float = Field(
        ge=0, le=1, description="The share of validation questions each threshold may flag."
    )
    stats: dict[str, Any] = Field(default_factory=dict, description="Distributions, counts.")

    def known(self) -> frozenset[str]:
        return frozenset(self.known_words)


def read_profile(run_dir: Path) -> QuestionProfile | None:
    """The run's profile; None when the run has none. A file that is there but unreadable is a
    ValueError naming it (serving without warnings would hide it)."""
    path = run_dir / PROFILE_FILE
    if not path.is_file():
        return None
    try:
        profile = QuestionProfile.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"{path} is not a valid {PROFILE_FILE}: {exc}") from None
    if profile.version != PROFILE_VERSION:
        raise ValueError(f"{path}: version {profile.version}, expected {PROFILE_VERSION}")
    return profile


def words(text: str) -> set[str]:
    """The words of a text (case kept: the tokenizer tells `Ben` from `ben` too)."""
    return set(_WORD.findall(text))


@dataclass(frozen=True)
class QuestionReading:
    """A question as the policy meets it: its tokens, which of them are pieces of words unseen
    in training, and the policy's mean log-probability per question token."""

    tokens: int
    unseen_tokens: int
    unseen_words: tuple[str, ...]
    mean_logprob: float | None = None

    @property
    def unseen_share(self) -> float:
        return self.unseen_tokens / self.tokens if self.tokens else 0.0


def read_tokens(question: str, tokenizer: Any, known: frozenset[str]) -> QuestionReading:
    """Token count and unseen-word pieces of the question's text as the policy prompt holds it.

    A token is an unseen-word piece when any character it covers belongs to a word that no
    training question or solution contains.
    """
    _, text = question_in_prompt(question)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    unseen_chars = [False] * len(text)
    unseen: list[str] = []
    for m in _WORD.finditer(text):
        if m.group() not in known:
            unseen_chars[m.start() : m.end()] = [True] * (m.end() - m.start())
            if m.group() not in unseen:
                unseen.append(m.group())
    pieces = sum(any(unseen_chars[a:b]) for a, b in enc["offset_mapping"])
    return QuestionReading(len(enc["input_ids"]), pieces, tuple(unseen))


def likelihood_request(question: str) -> LikelihoodRequest:
    return LikelihoodRequest(*question_in_prompt(question))


def mean_question_logprob(logprobs: Sequence[float]) -> float:
    """The mean over the question's tokens; the reading's last entry is the closing EOS, which
    a question is never followed by in a prompt, so it is left out."""
    body = logprobs[:-1] or logprobs
    return sum(body) / len(body) if body else 0.0


async def read_questions(
    questions: Sequence[str], tokenizer: Any, known: frozenset[str], policy: Generator | None
) -> list[QuestionReading]:
    """Every question read (one batched likelihood call to the policy, when given)."""
    readings = [read_tokens(q, tokenizer, known) for q in questions]
    if policy is None or not questions:
        return readings
    reads = await policy.logprobs([likelihood_request(q) for q in questions])
    return [
        replace(r, mean_logprob=mean_question_logprob(lp.logprobs))
        for r, lp in zip(readings, reads, strict=True)
    ]


def _kth(values: Sequence[float], rate: float) -> float:
    """The value with floor(rate * n) values before it in sorted order: flagging only values
    strictly beyond it flags at most that many, a `rate` share."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(rate * len(ordered)))]


def choose_thresholds(
    train: Sequence[QuestionReading],
    val: Sequence[QuestionReading],
    *,
    false_alarm_rate: float,
    min_unseen_share: float,
) -> Thresholds:
    """Thresholds from the run's own questions.

    Length: the longest training question. The other two are chosen on validation questions,
    which the models never trained on but which come from the training distribution: each
    flags at most `false_alarm_rate` of them. The unseen share is never below
    `min_unseen_share`, so a single unknown name in a long question does not warn.
    """
    if not train or not val:
        raise ValueError("a profile needs training and validation questions")
    lps = [r.mean_logprob for r in val if r.mean_logprob is not None]
    if len(lps) != len(val):
        raise ValueError("every validation question needs the policy's likelihood")
    shares = [-r.unseen_share for r in val]  # the highest shares first
    return Thresholds(
        unseen_share=max(min_unseen_share, -_kth(shares, false_alarm_rate)),
        max_tokens=max(r.tokens for r in train),
        mean_logprob=_kth(lps, false_alarm_rate),
    )


def check(reading: QuestionReading, profile: QuestionProfile) -> list[QuestionWarning]:
    """The warnings a question earns against the profile (none when it looks like training)."""
    t = profile.thresholds
    out: list[QuestionWarning] = []
    if reading.unseen_share > t.unseen_share:
        shown = ", ".join(repr(w) for w in reading.unseen_words[:5])
        more = f" and {len(reading.unseen_words) - 5} more" if len(reading.unseen_words) > 5 else ""
        out.append(
            QuestionWarning(
                WarningCode.UNSEEN_WORDS,
                f"{reading.unseen_tokens} of {reading.tokens} tokens ({reading.unseen_share:.0%})"
                f" are pieces of words never seen in training ({shown}{more}); the models have "
                f"not learned them (warning above {t.unseen_share:.0%}).",
            )
        )
    if reading.tokens > t.max_tokens:
        out.append(
            QuestionWarning(
                WarningCode.LONGER_THAN_TRAINING,
                f"the question is {reading.tokens} tokens long; the longest training question "
                f"had {t.max_tokens}.",
            )
        )
    if reading.mean_logprob is not None and reading.mean_logprob < t.mean_logprob:
        out.append(
            QuestionWarning(
                WarningCode.UNLIKELY_QUESTION,
                f"the policy finds this question unlikely: {reading.mean_logprob:.2f} nats per "
                f"token, below {t.mean_logprob:.2f}, which at most "
                f"{profile.false_alarm_rate:.0%} of validation questions fall under.",
            )
        )
    return out
