"""`glore eval` on a smoke-trained run: the report folder and its schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.evaluation.report import PAPER_CONTEXT, PLOTS
from training.evaluation.runner import METHODS

ROOT = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_dir(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    cmd = [sys.executable, "-m", "glore.cli", "eval", "--run", str(smoke_run), "--out", str(out)]
    cmd += ["--n", "24", "--n-val", "8", "--k", "2", "--max-new-tokens", "64", "--seed", "3"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"report: {out}/report.md" in proc.stdout
    return out


def _is_prob(x: object) -> bool:
    return isinstance(x, float | int) and 0.0 <= x <= 1.0


def test_eval_writes_json_markdown_records_and_every_plot(report_dir: Path) -> None:
    assert (report_dir / "report.md").read_text().startswith("# GLoRe evaluation")
    for name in PLOTS:
        assert (report_dir / f"{name}.png").read_bytes()[:8] == PNG
    records = (report_dir / "records.jsonl").read_text().splitlines()
    assert len(records) == 24


def test_eval_report_schema(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report) == {"version", "meta", "paper_context", "where", "when", "how", "claims"}
    assert report["paper_context"] == PAPER_CONTEXT
    meta = report["meta"]
    # The smoke run keeps 16 test questions; the other 8 come from a stream it never trained on.
    assert (meta["n_test"], meta["n_val"], meta["k"], meta["seed"]) == (24, 8, 2, 3)
    assert _is_prob(meta["gate_threshold"])

    methods = report["how"]["methods"]
    expected = {m.name for m in METHODS} | {"oracle_best_candidate", "oracle_refine_when_wrong"}
    assert set(methods) == expected
    for name, row in methods.items():
        acc, (lo, hi) = row["accuracy"]["value"], row["accuracy"]["ci95"]
        assert _is_prob(acc) and lo <= acc <= hi, name
        assert row["tokens_per_question"] >= 0
    # An oracle that may pick any candidate is never below the strategy it picks from.
    best = methods["oracle_best_candidate"]["accuracy"]["value"]
    assert best >= methods["glore"]["accuracy"]["value"]
    assert methods["greedy"]["fix_rate"] in (0.0, None)
    assert _is_prob(report["how"]["glore_vs_best_of_3"]["p_value"])

    for truth in ("exact", "vstar"):
        section = report["where"][truth]
        for model in ("orm", "sorm"):
            row = section[model]
            for key in ("step_accuracy@0.5", "step_accuracy@best", "first_error_accuracy@0.5"):
                assert _is_prob(row[key]), (truth, model, key)
            assert sum(p["count"] for p in row["by_step_index@0.5"]) == report["where"]["steps"]
    assert _is_prob(report["where"]["vstar_exact_disagreement"])
    curve = report["when"]["pr_curve"]
    assert [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)
    assert curve[0]["flagged"] == 0  # nothing scores below 0
    assert set(report["claims"]) == {"sorm_step_accuracy_above_orm", "glore_beats_best_of_3"}
