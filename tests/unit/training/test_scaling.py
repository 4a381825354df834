"""`glore scaling`: variants parse with their overrides, intervals are Wilson's, and the report
gives each run and, over several seeds, the spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluation.handwritten import DEFAULT_QUESTIONS, load_questions
from training.scaling import Variant, build_report, markdown, plot, wilson


def test_a_variant_is_a_name_and_its_overrides() -> None:
    v = Variant.parse("d192:model.hidden_size=192,model.intermediate_size=576")
    assert v.name == "d192"
    assert v.overrides == ("model.hidden_size=192", "model.intermediate_size=576")
    assert Variant.parse("base:").overrides == ()
    with pytest.raises(ValueError, match="key=value"):
        Variant.parse("bad:model.hidden_size")
    with pytest.raises(ValueError, match="plain name"):
        Variant.parse(":seed=1")


def test_wilson_interval_brackets_the_rate_and_narrows_with_more_questions() -> None:
    lo, hi = wilson(90, 100)
    assert lo < 0.9 < hi and round(lo, 3) == 0.826 and round(hi, 3) == 0.945
    lo2, hi2 = wilson(900, 1000)
    assert hi2 - lo2 < hi - lo


def _row(variant: str, seed: int, dev: list[int], params: int) -> dict:
    return {
        "variant": variant, "overrides": [], "seed": seed, "run": f"runs/{variant}-{seed}",
        "parameters": params, "model": {}, "steps": 100, "policy_seconds": 70.0,
        "train_seconds": 60.0, "tokens_per_second": 8000.0, "final_loss": 0.1,
        "correct": {"dev": dev, "made_up": [1, 0]},
    }  # fmt: skip


def test_the_report_gives_each_run_and_the_spread_over_seeds(tmp_path: Path) -> None:
    rows = [
        _row("small", 0, [1, 0, 0, 0], 500_000),
        _row("base", 0, [1, 1, 1, 0], 1_000_000),
        _row("base", 1, [1, 1, 0, 0], 1_000_000),
    ]
    report = build_report(rows, preset="tiny", n_dev=4)
    base = report["variants"]["base"]
    assert base["seeds"] == [0, 1]
    assert base["accuracy"]["dev"]["mean"] == pytest.approx(0.625)
    assert base["accuracy"]["dev"]["min"] == 0.5 and base["accuracy"]["dev"]["max"] == 0.75
    assert report["variants"]["small"]["accuracy"]["dev"]["sd"] is None
    md = markdown(report)
    assert "| base seed 1 | 1,000,000 |" in md and "## Spread over seeds" in md
    assert "62.5% ±" in md
    json.dumps(report)  # the report is plain JSON
    plot(report, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 10_000


def test_the_hand_written_questions_parse_and_state_their_answers(tmp_path: Path) -> None:
    rows = load_questions(DEFAULT_QUESTIONS)
    assert len(rows) >= 30 and all(r["answer"].isdigit() for r in rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "How many?"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_questions(bad)
