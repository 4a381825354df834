"""The evaluation report from hand-built records: its tables, claims, markdown and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluation.report import (
    PAPER_CONTEXT,
    PLOTS,
    build_report,
    gate_threshold,
    to_markdown,
    write_report,
)
from training.evaluation.runner import METHODS, Outcome, QuestionRecord, oracle_outcomes


def record(
    pid: str,
    *,
    draft_ok: bool,
    glob: bool,
    local: bool,
    bo3: bool,
    orm: list[float],
    sorm: list[float],
    exact: list[bool],
    draft_orm: float,
) -> QuestionRecord:
    def out(ok: bool, tokens: int, winner: str) -> Outcome:
        return Outcome("1" if ok else "2", ok, tokens, winner)

    glore_ok = draft_ok or glob or local
    methods = {
        "greedy": out(draft_ok, 10, "draft"),
        "best_of_3": out(bo3, 30, "sample_1"),
        "global_only": out(draft_ok or glob, 20, "global"),
        "local_only": out(draft_ok or local, 20, "local"),
        "glore": out(glore_ok, 30, "draft"),
        "glore_gated": out(draft_ok, 10, "draft"),
    }
    return QuestionRecord(
        problem_id=pid,
        reference="1",
        draft_steps=[f"s{i}" for i in range(len(orm))],
        draft_answer="1" if draft_ok else "2",
        draft_correct=draft_ok,
        draft_tokens=10,
        exact_prefix_ok=exact,
        orm_steps=orm,
        sorm_steps=sorm,
        candidates={
            "draft": out(draft_ok, 10, "draft"),
            "global": out(glob, 10, "global"),
            "local": out(local, 10, "local"),
        },
        candidate_orm={"draft": draft_orm, "global": 0.5, "local": 0.5},
        methods=methods,
    )


RECORDS = [
    # right draft; the global refiner breaks it
    record("a", draft_ok=True, glob=False, local=True, bo3=True, orm=[0.9, 0.8],
           sorm=[0.9, 0.9], exact=[True, True], draft_orm=0.8),
    # wrong draft fixed by both refiners; SORM finds the error, ORM does not
    record("b", draft_ok=False, glob=True, local=True, bo3=False, orm=[0.7, 0.6],
           sorm=[0.8, 0.2], exact=[True, False], draft_orm=0.3),
    # wrong draft fixed only locally
    record("c", draft_ok=False, glob=False, local=True, bo3=False, orm=[0.6, 0.4],
           sorm=[0.3, 0.1], exact=[False, False], draft_orm=0.2),
    # wrong draft nobody fixes
    record("d", draft_ok=False, glob=False, local=False, bo3=True, orm=[0.2, 0.1],
           sorm=[0.6, 0.2], exact=[True, False], draft_orm=0.6),
]  # fmt: skip


def test_oracles_take_the_best_candidate_or_keep_a_right_draft() -> None:
    a, b, _, d = (oracle_outcomes(r) for r in RECORDS[:1] + RECORDS[1:])
    assert a["oracle_best_candidate"].correct and a["oracle_refine_when_wrong"].tokens == 10
    assert b["oracle_best_candidate"].winner == "global"
    assert not d["oracle_best_candidate"].correct
    assert d["oracle_refine_when_wrong"].tokens == 30


def test_report_tables_have_exact_values_on_hand_built_records() -> None:
    report = build_report(RECORDS, RECORDS, meta={"run": "hand"}, seed=0)
    how = report["how"]
    assert set(how["methods"]) == {m.name for m in METHODS} | {
        "oracle_best_candidate",
        "oracle_refine_when_wrong",
    }
    assert how["methods"]["greedy"]["accuracy"]["value"] == 0.25
    assert how["methods"]["glore"]["accuracy"]["value"] == 0.75
    assert how["methods"]["best_of_3"]["accuracy"]["value"] == 0.5
    assert how["methods"]["glore"]["fix_rate"] == pytest.approx(2 / 3)
    assert how["methods"]["glore"]["tokens_per_question"] == 30
    assert how["refiners"]["global"] == {
        "fix_rate": pytest.approx(1 / 3),
        "break_rate": 1.0,
        "fixed": 1,
        "broken": 1,
        "wrong_drafts": 3,
        "right_drafts": 1,
    }
    assert how["refiners"]["local"]["fix_rate"] == pytest.approx(2 / 3)
    assert how["glore_vs_best_of_3"]["difference"] == 0.25
    # (right, wrong) pairs: a 1 + tie, b 1 + 1, c 1 + tie, d none -> 5 of 6 in 3 questions
    assert how["reranker"] == {
        "within_question_pairwise_accuracy": pytest.approx(5 / 6),
        "pairs": 6,
        "questions": 3,
    }

    exact = report["where"]["exact"]
    # ORM @0.5: a 2/2, b 1/2 (0.6 says ok), c 1/2 (0.6 ok vs F), d 1/2 (0.2 vs T) -> 5/8
    assert exact["orm"]["step_accuracy@0.5"] == pytest.approx(5 / 8)
    # SORM @0.5: a 2/2, b 2/2, c 2/2, d 2/2 -> 1
    assert exact["sorm"]["step_accuracy@0.5"] == 1.0
    assert exact["sorm"]["first_error_accuracy@0.5"] == 1.0
    assert report["where"]["vstar"] is None
    assert report["claims"] == {
        "sorm_step_accuracy_above_orm": True,
        "glore_beats_best_of_3": True,
    }
    assert report["when"]["orm_roc_auc"] == 1.0  # the one right draft has the top ORM score
    assert report["paper_context"] == PAPER_CONTEXT


def test_gate_threshold_refines_exactly_the_drafts_worth_refining() -> None:
    # Refining b and c (ORM 0.3, 0.2) gains; refining a (0.8) gains nothing; d (0.6) never fixed.
    t = gate_threshold(RECORDS)
    assert 0.3 < t <= 0.8


def test_written_report_has_json_markdown_and_every_plot(tmp_path: Path) -> None:
    report = build_report(RECORDS, RECORDS, meta={"run": "hand", "n_test": 4}, seed=0)
    paths = write_report(report, RECORDS, tmp_path)
    assert json.loads(paths["json"].read_text())["claims"] == report["claims"]
    md = paths["md"].read_text()
    assert "| glore | 75.0% |" in md
    assert "53.0% greedy → 65.0%" in md
    for name in PLOTS:
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in md
    assert to_markdown(report) == md
