"""The evaluation harness's records in a run: test and dev counts, and the serving defaults."""

from __future__ import annotations

import json
from pathlib import Path

from service.settings import SERVING_FILE, ServingDefaults, read_serving_defaults
from training.evaluation.evaluate import (
    EVALUATIONS_FILE,
    Split,
    count_evaluation,
    fresh_split,
    write_serving_defaults,
)


def test_each_split_counts_its_own_evaluations(tmp_path: Path) -> None:
    assert count_evaluation(tmp_path, Split.DEV) == {"test": 0, "dev": 1}
    assert count_evaluation(tmp_path, Split.TEST) == {"test": 1, "dev": 1}
    assert count_evaluation(tmp_path, Split.TEST) == {"test": 2, "dev": 1}
    assert json.loads((tmp_path / EVALUATIONS_FILE).read_text()) == {"test": 2, "dev": 1}
    assert [p.name for p in tmp_path.iterdir()] == [EVALUATIONS_FILE]  # no temp file left


def test_serving_defaults_are_written_beside_the_manifest_and_recorded_in_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"policy": {"status": "done"}}}))
    chosen = ServingDefaults(sorm_threshold=0.42, orm_threshold=0.35, report="r/report.json")
    write_serving_defaults(tmp_path, chosen)
    assert read_serving_defaults(tmp_path) == chosen
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"] == {"policy": {"status": "done"}}
    assert manifest["serving"] == {"file": SERVING_FILE, **chosen.model_dump()}


def test_fresh_questions_split_between_dev_and_test_by_their_canonical_form() -> None:
    questions = [f"Ann has {i} apples. How many apples does Ann have?" for i in range(200)]
    splits = [fresh_split(q) for q in questions]
    assert 60 < splits.count(Split.DEV) < 140  # about half each
    # the same question, spaced or cased otherwise, always lands on the same side
    respelled = [fresh_split(q.upper().replace(" ", "  ")) for q in questions]
    assert respelled == splits
