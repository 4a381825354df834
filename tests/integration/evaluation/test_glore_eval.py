"""`glore eval` on a smoke-trained run: the report folder and its schema, the test split
counted and setting the serving defaults, and a dev split disjoint from every other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import SERVING_FILE, read_serving_defaults
from training.evaluation.evaluate import DEV_STREAM, dev_problems, held_out_problems
from training.evaluation.report import PAPER_CONTEXT, PLOTS
from training.evaluation.runner import METHODS
from training.tasks import canonical_question, load_problems

ROOT = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the smoke run, since evaluations write into the run (counts, serving.json)."""
    copy = tmp_path_factory.mktemp("eval-run") / "run"
    shutil.copytree(smoke_run, copy)
    return copy


def glore_eval(run: Path, out: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "glore.cli", "eval", "--run", str(run), "--out", str(out)]
    cmd += ["--n-val", "8", "--k", "2", "--max-new-tokens", "64", "--seed", "3", *args]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"report: {out}/report.md" in proc.stdout


@pytest.fixture(scope="module")
def report_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    glore_eval(run_dir, out, "--n", "24")
    return out


@pytest.fixture(scope="module")
def dev_dir(run_dir: Path, report_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev evaluation after the test one (so it can be seen to leave the test state alone)."""
    out = tmp_path_factory.mktemp("eval-dev")
    glore_eval(run_dir, out, "--split", "dev", "--n", "8", "--no-vstar")
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
    assert set(report) == {
        "version", "meta", "paper_context", "where", "when", "how", "claims", "generalisation",
    }  # fmt: skip
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
    assert _is_prob(report["how"]["comparisons"]["glore_vs_best_of_3"]["p_value"])

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
    comparisons = report["how"]["comparisons"]
    assert {"glore_vs_greedy", "best_of_3_vs_greedy", "glore_vs_self_consistency"} <= set(
        comparisons
    )
    for comparison in comparisons.values():
        if comparison is not None:
            assert _is_prob(comparison["p_value"]) and comparison["questions"] == 24
    assert set(report["claims"]) == {"where", "how"}
    for claim in report["claims"].values():
        assert claim["statement"].startswith("Reproduces" if claim["reproduces"] else "Does not")


def test_a_test_evaluation_is_counted_and_sets_the_thresholds_serve_uses(
    report_dir: Path, run_dir: Path
) -> None:
    meta = json.loads((report_dir / "report.json").read_text())["meta"]
    assert (meta["split"], meta["test_evaluations"], meta["dev_evaluations"]) == ("test", 1, 0)
    chosen = read_serving_defaults(run_dir)
    assert chosen is not None
    assert (chosen.sorm_threshold, chosen.orm_threshold) == (
        meta["sorm_threshold"],
        meta["gate_threshold"],
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["serving"]["file"] == SERVING_FILE
    assert manifest["serving"]["sorm_threshold"] == meta["sorm_threshold"]
    assert manifest["stages"]  # the training record is kept


def test_a_dev_evaluation_is_counted_apart_and_leaves_the_serving_defaults_alone(
    dev_dir: Path, run_dir: Path
) -> None:
    serving = (run_dir / SERVING_FILE).read_text()  # written by the test evaluation
    report = json.loads((dev_dir / "report.json").read_text())
    meta = report["meta"]
    assert (meta["split"], meta["n_test"], meta["test_evaluations"]) == ("dev", 8, 1)
    assert meta["dev_evaluations"] == 1
    assert json.loads((run_dir / "evaluations.json").read_text()) == {"test": 1, "dev": 1}
    assert (run_dir / SERVING_FILE).read_text() == serving
    records = [json.loads(line) for line in (dev_dir / "records.jsonl").read_text().splitlines()]
    assert all(r["problem_id"].startswith(f"syn-{DEV_STREAM}-") for r in records)


def test_dev_questions_are_disjoint_from_train_validation_and_every_test_question(
    run_dir: Path,
) -> None:
    test, _ = held_out_problems(run_dir, 60, 8)  # 16 kept by the run, 44 generated
    dev = dev_problems(run_dir, 60)
    others = [
        *test,
        *(p for s in ("train", "val") for p in load_problems(run_dir / "data" / f"{s}.jsonl")),
    ]
    dev_questions = {canonical_question(p.question) for p in dev}
    assert len(dev_questions) == 60
    assert dev_questions.isdisjoint(canonical_question(p.question) for p in others)
    assert dev_problems(run_dir, 10) == dev[:10]  # a smaller dev split is a prefix


def test_eval_reports_generalisation_to_held_out_names_and_templates(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    section = report["generalisation"]
    greedy = report["how"]["methods"]["greedy"]["accuracy"]["value"]
    assert section["in_distribution"]["accuracy"]["value"] == greedy
    assert section["in_distribution"]["n"] == 24
    # The smoke run trains on the tiny task: 10 of 30 names, 6 of 16 objects, 3 of 4 templates,
    # so both held-out parts exist and are measured on as many questions as the split.
    for part, target in (("heldout_names", 0.10), ("heldout_templates", 0.20)):
        row = section[part]
        assert row["n"] == 24 and _is_prob(row["accuracy"]["value"])
        assert row["target_gap"] == target
        gap = greedy - row["accuracy"]["value"]
        assert row["gap"] == pytest.approx(gap) and row["met"] is (round(gap, 9) <= target)
    md = (report_dir / "report.md").read_text()
    assert "## Generalisation: held-out parts of the generator" in md
    assert "held-out names and objects" in md and "held-out phrasing templates" in md
