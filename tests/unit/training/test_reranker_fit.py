"""The reranker stage's fitting: within-question pairs only, so what it learns is what tells a
right solution from a wrong one of the same question, not which questions are hard."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from engines.base import StepScores, TokenLogprobs
from engines.reranker import DEFAULT_FILE, Readings, Reranker
from training.evaluation.metrics import within_question_pairwise
from training.reranker import (
    Row,
    Sample,
    collect_samples,
    fit_pairwise,
    grouped,
    sample_rows,
    save_rerankers,
    split_questions,
    train_rerankers,
)
from training.vstar import DraftRollout


def world(n_questions: int, per_question: int, seed: int) -> tuple[list[Sample], list[Readings]]:
    """Questions of varied difficulty. The ORM-like score knows only the difficulty (it is the
    same for every solution of a question, plus noise); the mean log-probability is lower on
    wrong solutions of the same question."""
    rng = random.Random(seed)
    samples, reads = [], []
    for q in range(n_questions):
        ease = rng.random()
        for j in range(per_question):
            correct = rng.random() < ease
            orm = min(max(ease + rng.gauss(0, 0.05), 0.01), 0.99)
            lp = (-0.3 if correct else -0.9) + rng.gauss(0, 0.2) - 0.5 * (1 - ease)
            samples.append(Sample(f"q{q}", (f"s{j}", "The answer is 1."), correct, "draft"))
            reads.append(Readings(StepScores((orm,)), TokenLogprobs((lp, lp))))
    return samples, reads


def test_a_pairwise_fit_weighs_the_within_question_signal_not_question_difficulty() -> None:
    samples, reads = world(200, 6, seed=1)
    x = np.array([[math.log(r.orm.outcome_prob / (1 - r.orm.outcome_prob)),  # type: ignore[union-attr]
                   r.logprobs.mean] for r in reads])  # type: ignore[union-attr]  # fmt: skip
    w, center, scale = fit_pairwise(
        x, [s.problem_id for s in samples], [s.correct for s in samples], l2=1e-3
    )
    assert w[1] > 0.5 and abs(w[0]) < w[1] / 3  # the log-probability carries the weight
    r = Reranker("fit", ("orm_logit", "lp_mean"), tuple(w), tuple(center), tuple(scale))
    fresh, fresh_reads = world(100, 6, seed=2)
    rows = sample_rows(fresh, fresh_reads)
    ranking = within_question_pairwise(*grouped(rows, [r.score(x) for x in fresh_reads]))
    assert ranking.accuracy is not None and ranking.accuracy > 0.9


def test_no_question_with_both_outcomes_is_refused() -> None:
    with pytest.raises(ValueError, match="no question has both"):
        fit_pairwise(np.zeros((2, 1)), ["a", "b"], [True, False], l2=0.0)


def test_train_rerankers_holds_out_whole_questions_and_measures_every_reranker() -> None:
    samples, reads = world(120, 5, seed=3)
    rows = sample_rows(samples, reads)
    fitted, report = train_rerankers(
        rows,
        {"lp_orm": ("orm_logit", "lp_mean"), "lp_only": ("lp_mean",)},
        l2=1e-3,
        holdout_share=0.25,
        seed=0,
    )
    assert set(fitted) == {"lp_orm", "lp_only"}
    table = report["heldout_pairwise"]
    assert set(table) == {"orm", "policy_mean_logprob", "lp_orm", "lp_only"}
    # The ORM-like feature is flat inside a question: a coin flip; the fitted ones rank.
    assert table["lp_orm"]["pairwise"] > 0.85 > 0.65 > table["orm"]["pairwise"]
    counts = report["counts"]
    assert counts["samples"] == 600 and counts["fit_samples"] + counts["check_samples"] == 600
    fit, check = split_questions(rows, 0.25, 0)
    assert not {samples[i].problem_id for i in fit} & {samples[i].problem_id for i in check}
    assert len({samples[i].problem_id for i in check}) == 30


def test_with_no_pairs_nothing_is_fitted_and_the_orm_is_saved_as_default(tmp_path: Path) -> None:
    samples = [Sample(f"q{i}", ("a",), i % 2 == 0, "draft") for i in range(8)]  # one per question
    reads = [Readings(StepScores((0.5,)), TokenLogprobs((-1.0,))) for _ in samples]
    fitted, _ = train_rerankers(
        sample_rows(samples, reads),
        {"lp_orm": ("orm_logit", "lp_mean")},
        l2=0.0,
        holdout_share=0.25,
        seed=0,
    )
    assert fitted == {}
    path = save_rerankers(tmp_path, fitted, "lp_orm", {})
    saved = Reranker.load(path)
    assert path.name == DEFAULT_FILE and saved.name == "orm"
    assert "could not be fitted" in saved.meta["fallback"]
    with pytest.raises(ValueError, match=r"reranker\.default: unknown 'nope'"):
        save_rerankers(tmp_path, {"a": Reranker("a", ("lp_mean",), (1.0,))}, "nope", {})


def test_samples_are_every_distinct_solution_drafts_extras_and_stitched_continuations() -> None:
    rollout = DraftRollout(
        problem_id="p",
        draft_index=0,
        steps=("A = 1.", "B = 2.", "The answer is 2."),
        answer="2",
        correct=True,
        finish_reason="stop",
        prefix_ok=(True, True, True),
        successes=(1, 0, 1),
        k=2,
        samples=(
            (("B = 2.\nThe answer is 2.", True, True), ("B = 3.\nThe answer is 3.", False, False)),
            (("The answer is 2.", True, True), ("The answer is 5.", False, False)),
            (),
        ),
    )
    extra = DraftRollout("p", 1, ("The answer is 7.",), "7", False, "stop", (False,), (0,), 2)
    got = collect_samples([rollout], [extra], continuations=True, max_steps=8)
    by_steps = {s.steps: s for s in got}
    # draft, extra, and one new solution per prefix: continuations that rewrite the draft's
    # own ending are the draft itself, kept once
    assert len(got) == 4 and len(by_steps) == 4
    assert by_steps[("A = 1.", "B = 2.", "The answer is 2.")].source == "draft"
    assert by_steps[("A = 1.", "B = 3.", "The answer is 3.")] == Sample(
        "p", ("A = 1.", "B = 3.", "The answer is 3."), False, "continuation"
    )
    assert by_steps[("A = 1.", "B = 2.", "The answer is 5.")].correct is False
    assert by_steps[("The answer is 7.",)].source == "extra"
    assert len(collect_samples([rollout], [], continuations=False, max_steps=8)) == 1
    cut = collect_samples([rollout], [], continuations=True, max_steps=2)
    assert all(len(s.steps) <= 2 for s in cut if s.source == "continuation")


def test_who_wrote_a_candidate_lets_a_fit_correct_the_likelihood_bias_towards_the_draft() -> None:
    """The policy finds its own greedy draft likelier than a refiner's rewrite whether or not
    the draft is right; among candidates of one writer, the likelier one is right. A fit on
    GLoRe's candidates with the writer as a feature ranks them; likelihood alone cannot."""
    rng = random.Random(4)
    rows = []
    for q in range(300):
        for kind in ("draft", "global", "local"):
            correct = rng.random() < 0.5
            lp = (-0.4 if correct else -0.8) + (0.6 if kind == "draft" else 0.0)
            lp += rng.gauss(0, 0.1)
            feats = {"kind_global": float(kind == "global"), "kind_local": float(kind == "local"),
                     "orm_logit": 0.0, "lp_mean": lp, "lp_min": lp, "lp_sum": lp,
                     "lp_low_share": 0.0}  # fmt: skip
            rows.append(Row(f"q{q}", correct, "candidate", feats))
    fitted, report = train_rerankers(
        rows,
        {"lp": ("lp_mean",), "lp_kind": ("kind_global", "kind_local", "lp_mean")},
        l2=1e-3,
        holdout_share=0.3,
        seed=0,
    )
    on_candidates = report["heldout_pairwise_candidates"]
    assert on_candidates["lp_kind"]["pairwise"] > 0.9
    assert on_candidates["lp"]["pairwise"] < 0.8
    w = dict(zip(fitted["lp_kind"].features, fitted["lp_kind"].weights, strict=True))
    assert w["kind_global"] > 0 and w["kind_local"] > 0 and w["lp_mean"] > 0
