"""`glore bench engines` on the tiny checkpoints, scaled down: real measurements, targets as
rows, and for scoring what bounds the ratio (tokens read each way, the bare model's own ratio)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import cli
from tests.support.tiny_models import TinyCheckpoints


def test_bench_engines_reports_scoring_with_what_bounds_it(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    argv = ["engines", "--policy", str(tiny_checkpoints.policy)]
    argv += ["--scorer", str(tiny_checkpoints.scorer), "--out", str(tmp_path)]
    argv += ["--backends", "hf", "--batches", "1,4", "--max-new-tokens", "8"]
    argv += ["--min-seconds", "0.2", "--callers", "4"]
    assert cli.run(parser.parse_args(argv)) == 0
    report = json.loads((tmp_path / "bench-engines.json").read_text())
    for batch in ("1", "4"):
        s = report["scoring"]["hf"][batch]
        assert s["one_pass_solutions_per_s"] > 0 and s["per_prefix_solutions_per_s"] > 0
        # Six prefixes of a six-step solution read more tokens than the solution once.
        assert s["tokens_per_prefix"] > 2 * s["tokens_one_pass"]
        assert s["padded_tokens_per_prefix"] >= s["tokens_per_prefix"]
        assert s["token_ratio"] == round(s["tokens_per_prefix"] / s["tokens_one_pass"], 2)
        assert s["model_only_ratio"] > 1
    rows = report["targets"]
    scoring = [t for t in rows if t["name"] == "one_pass_over_per_prefix_scoring"]
    assert sorted(t["batch"] for t in scoring) == [1, 4]
    for t in rows:
        assert t["met"] == (t["value"] >= t["target"])
    assert not Path(report["checkpoints"]["policy"]).is_absolute()
    text = (tmp_path / "bench-engines.md").read_text()
    assert "model only" in text and "| hf | 1 |" in text
