"""Rerankers as named linear scorers: validation, scores, files and how a name is resolved."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engines.base import StepScores, TokenLogprobs
from engines.reranker import (
    BUILTIN,
    DEFAULT_FILE,
    ORM_RERANKER,
    POLICY_LIKELIHOOD,
    RERANKER_DIR,
    Readings,
    Reranker,
    default_reranker,
    feature_values,
    resolve_reranker,
    run_rerankers,
)


def readings(outcome: float, lps: tuple[float, ...] | None = None) -> Readings:
    return Readings(StepScores((0.5, outcome)), None if lps is None else TokenLogprobs(tuple(lps)))


def test_a_reranker_with_an_unknown_feature_or_mismatched_weights_is_refused_naming_the_field() -> (
    None
):
    with pytest.raises(ValueError, match="features: unknown"):
        Reranker("x", ("orm_logit", "vibes"), (1.0, 1.0))
    with pytest.raises(ValueError, match="weights"):
        Reranker("x", ("orm_logit", "lp_mean"), (1.0,))
    with pytest.raises(ValueError, match="center"):
        Reranker("x", ("orm_logit",), (1.0,), center=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        Reranker("x", ("orm_logit",), (1.0,), scale=(0.0,))


def test_features_read_the_orm_logit_and_the_policy_token_logprobs() -> None:
    r = readings(0.8, (-1.0, -3.0, -0.5))
    orm_logit, lp_mean, lp_min, lp_sum = feature_values(
        r, ("orm_logit", "lp_mean", "lp_min", "lp_sum")
    )
    assert orm_logit == pytest.approx(math.log(0.8 / 0.2))
    assert (lp_mean, lp_min, lp_sum) == (pytest.approx(-1.5), -3.0, -4.5)
    with pytest.raises(ValueError, match="log-probabilities"):
        feature_values(readings(0.8), ("lp_mean",))


def test_the_orm_reranker_orders_by_outcome_score_and_the_likelihood_one_by_mean_logprob() -> None:
    right, wrong = readings(0.3, (-0.2, -0.3)), readings(0.6, (-0.2, -4.0))
    assert ORM_RERANKER.score(wrong) > ORM_RERANKER.score(right)
    assert POLICY_LIKELIHOOD.score(right) > POLICY_LIKELIHOOD.score(wrong)
    assert POLICY_LIKELIHOOD.needs_logprobs and not ORM_RERANKER.needs_logprobs
    # a candidate the ORM could not read (no steps) ranks last
    assert ORM_RERANKER.score(Readings(None)) == -math.inf


def test_a_standardised_combination_scores_as_its_formula_says() -> None:
    r = Reranker("mix", ("orm_logit", "lp_min"), (2.0, -1.0), center=(0.0, -2.0), scale=(1.0, 4.0))
    x = readings(0.5, (-1.0, -6.0))
    assert r.score(x) == pytest.approx(2.0 * 0.0 - 1.0 * (-6.0 + 2.0) / 4.0)


def test_a_reranker_file_round_trips_and_a_broken_one_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    r = Reranker("mix", ("orm_logit", "lp_mean"), (0.5, 1.5), (0.1, -2.0), (1.0, 0.5), "d",
                 meta={"heldout": {"pairwise": 0.8}})  # fmt: skip
    r.save(tmp_path / "mix.json")
    back = Reranker.load(tmp_path / "mix.json")
    assert back == r and back.meta == r.meta
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        Reranker.load(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({"name": "x", "features": ["orm_logit"]}))
    with pytest.raises(ValueError, match="weights"):
        Reranker.load(tmp_path / "short.json")


def test_a_run_resolves_default_saved_and_builtin_names_and_refuses_unknown_ones(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    assert default_reranker(run) == ORM_RERANKER  # nothing saved: the paper's ORM
    assert default_reranker(None) == ORM_RERANKER
    mix = Reranker("lp_orm", ("orm_logit", "lp_mean"), (0.3, 1.0))
    mix.save(run / RERANKER_DIR / "lp_orm.json")
    mix.save(run / RERANKER_DIR / DEFAULT_FILE)
    assert default_reranker(run) == mix
    assert resolve_reranker("default", run) == mix
    assert resolve_reranker("lp_orm", run) == mix
    assert resolve_reranker("orm", run) == ORM_RERANKER
    assert resolve_reranker(str(run / RERANKER_DIR / "lp_orm.json"), None) == mix
    assert set(run_rerankers(run)) == set(BUILTIN) | {"lp_orm"}
    with pytest.raises(ValueError, match=r"unknown 'nope'.*lp_orm"):
        resolve_reranker("nope", run)
