"""The report's generalisation section: greedy accuracy on held-out parts of the generator
beside in-distribution, each gap against the issue's target, and its markdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.evaluation.evaluate import Split, heldout_problems
from training.evaluation.report import _generalisation_markdown, generalisation_section
from training.tasks import TaskConfig, canonical_question, generate_problems, save_problems
from training.tasks.synthetic import NAMES, OBJECTS


def test_gaps_are_measured_against_in_distribution_and_judged_by_the_targets() -> None:
    ind = [True] * 8 + [False] * 2  # 80%
    section = generalisation_section(
        ind,
        {"heldout_names": [True] * 7 + [False] * 3, "heldout_templates": [True] * 5 + [False] * 5},
        seed=0,
    )
    assert section["in_distribution"]["accuracy"]["value"] == pytest.approx(0.8)
    names, templates = section["heldout_names"], section["heldout_templates"]
    assert names["gap"] == pytest.approx(0.1) and names["met"] is True  # within 10 points
    assert templates["gap"] == pytest.approx(0.3) and templates["met"] is False  # not within 20
    assert (names["n"], templates["target_gap"]) == (10, 0.2)
    lo, hi = names["accuracy"]["ci95"]
    assert lo <= 0.7 <= hi


def test_a_part_that_could_not_be_measured_says_why() -> None:
    heldout = {"heldout_names": [False, False], "heldout_templates": "nothing to hold out"}
    section = generalisation_section([True, False], heldout, seed=0)
    assert section["heldout_names"]["met"] is False
    assert section["heldout_templates"]["accuracy"] is None
    assert section["heldout_templates"]["note"] == "nothing to hold out"
    md = "\n".join(_generalisation_markdown(section))
    assert "## Generalisation" in md
    assert "held-out real names and objects | 0.0%" in md and "missed" in md
    assert "not measured: nothing to hold out" in md


def _run_with_task(tmp_path: Path, task: dict) -> Path:
    run = tmp_path / "run"
    (run / "policy").mkdir(parents=True)
    (run / "policy" / "recipe.yaml").write_text(yaml.safe_dump({"data": {"task": task}}))
    cfg = TaskConfig.from_dict(task)
    (run / "data").mkdir()
    save_problems(generate_problems(cfg, 30, seed=0), run / "data" / "train.jsonl")
    return run


def test_held_out_problems_of_a_tiny_run_use_the_words_and_templates_it_never_trained_on(
    tmp_path: Path,
) -> None:
    run = _run_with_task(tmp_path, {"preset": "tiny"})
    parts = heldout_problems(run, 20, Split.TEST)
    names = parts["heldout_names"]
    assert isinstance(names, list) and len(names) == 20
    for p in names:
        assert p.steps[0].rstrip(".").split()[-1] in OBJECTS[6:]
        assert p.question.split()[0] in NAMES[10:] or p.question.startswith("At first")
    templates = parts["heldout_templates"]
    assert isinstance(templates, list) and len(templates) == 20
    trained = {canonical_question(p.question) for p in generate_problems(TaskConfig.tiny(), 30, 0)}
    assert not trained & {canonical_question(p.question) for p in templates}
    # Dev and test draw disjoint questions from each part.
    dev = heldout_problems(run, 20, Split.DEV)["heldout_names"]
    assert isinstance(dev, list)
    assert not {p.question for p in dev} & {p.question for p in names}


def test_a_task_with_nothing_held_out_reports_why(tmp_path: Path) -> None:
    run = _run_with_task(tmp_path, {"preset": "easy"})  # every template of every kind in use
    parts = heldout_problems(run, 5, Split.TEST)
    assert isinstance(parts["heldout_templates"], str) and "hold out" in parts["heldout_templates"]
