"""The question profile stage: what the training questions look like to the models, and where
the service should start warning that a question is beyond them (service.profile).

The words come from the training split (questions and reference solutions), the longest
question from the training questions, and the likelihood and unseen-share thresholds from the
validation questions, each flagging at most `false_alarm_rate` of them. Two probes made from the
validation questions show that the warnings fire when they should: every word reversed (unseen
words) and the word order reversed (an unlikely question).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.base import Role
from service.profile import (
    PROFILE_FILE,
    QuestionProfile,
    QuestionReading,
    check,
    choose_thresholds,
    read_questions,
    read_tokens,
    words,
)
from training import generation
from training.config import ProfileConfig


def known_words(problems: Sequence[Any]) -> list[str]:
    """Every word of the training questions and their reference solutions, sorted."""
    seen: set[str] = set()
    for p in problems:
        seen |= words(p.question)
        for step in p.steps:
            seen |= words(step)
    return sorted(seen)


def reversed_words(question: str) -> str:
    """Each word spelled backwards: the same numbers and length, words never seen."""
    return " ".join(w[::-1] for w in question.split())


def reversed_order(question: str) -> str:
    """The words in reverse order: the same words, an order the policy never read."""
    return " ".join(reversed(question.split()))


def _summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {
        "n": len(ordered),
        "min": round(ordered[0], 4),
        "p01": at(0.01),
        "p05": at(0.05),
        "median": round(statistics.median(ordered), 4),
        "max": round(ordered[-1], 4),
    }


def _warned(readings: Sequence[QuestionReading], profile: QuestionProfile) -> dict[str, Any]:
    """How many questions earn each warning, and how many earn any."""
    codes = [[w.code.value for w in check(r, profile)] for r in readings]
    counts = {code: sum(code in c for c in codes) for code in sorted({x for c in codes for x in c})}
    return {"questions": len(readings), "any": sum(bool(c) for c in codes), "by_code": counts}


def build_profile(
    train: Sequence[Any],
    val: Sequence[Any],
    policy: Path,
    tokenizer: Any,
    cfg: ProfileConfig,
    seed: int,
) -> QuestionProfile:
    """Read the run's questions through the policy and choose the thresholds on validation."""
    known = frozenset(known_words(train))
    sample = list(train)
    if cfg.train_questions and len(sample) > cfg.train_questions:
        sample = random.Random(seed).sample(sample, cfg.train_questions)
    spec = generation.engine_spec(policy, cfg.backend, cfg.max_batch_size)
    gen = generation.load_generator(Role.POLICY, spec)
    try:

        def read(questions: Sequence[str]) -> list[QuestionReading]:
            out: list[QuestionReading] = generation.run_async(
                read_questions(questions, tokenizer, known, gen)
            )
            return out

        val_q = [p.question for p in val]
        val_r = read(val_q)
        sample_r = read([p.question for p in sample])
        probes = {
            "reversed_words": read([reversed_words(q) for q in val_q]),
            "reversed_order": read([reversed_order(q) for q in val_q]),
        }
    finally:
        generation.close(gen)
    # The longest question is over every training question, not the likelihood sample.
    train_r = [QuestionReading(t, 0, ()) for t in _token_counts(train, tokenizer)]
    thresholds = choose_thresholds(
        train_r,
        val_r,
        false_alarm_rate=cfg.false_alarm_rate,
        min_unseen_share=cfg.min_unseen_share,
    )
    profile = QuestionProfile(
        known_words=sorted(known), thresholds=thresholds, false_alarm_rate=cfg.false_alarm_rate
    )

    def lp(rs: Sequence[QuestionReading]) -> dict[str, float]:
        return _summary([r.mean_logprob for r in rs if r.mean_logprob is not None])

    profile.stats = {
        "known_words": len(known),
        "train_questions": len(train),
        "mean_logprob": {"train_sample": lp(sample_r), "val": lp(val_r)},
        "tokens": {
            "train": _summary([r.tokens for r in train_r]),
            "val": _summary([r.tokens for r in val_r]),
        },
        "unseen_share": {"val": _summary([r.unseen_share for r in val_r])},
        "warned": {
            "val": _warned(val_r, profile),
            "train_sample": _warned(sample_r, profile),
            **{f"probe_{name}": _warned(rs, profile) for name, rs in probes.items()},
        },
    }
    return profile


def _token_counts(problems: Sequence[Any], tokenizer: Any) -> list[int]:
    return [read_tokens(p.question, tokenizer, frozenset()).tokens for p in problems]


def save_profile(profile: QuestionProfile, run_dir: Path) -> Path:
    path = run_dir / PROFILE_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(profile.model_dump_json(indent=1) + "\n")
    tmp.replace(path)
    return path
