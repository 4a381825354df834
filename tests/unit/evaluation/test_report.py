"""The evaluation report from hand-built records: its tables, claims, markdown and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.evaluation.report import (
    PAPER_CONTEXT,
    PLOTS,
    SELF_CONSISTENCY_ROWS,
    build_report,
    gate_threshold,
    self_consistency_comparator,
    sorm_threshold,
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
        # the paper's ORM reranker keeps the draft (the fidelity rows)
        "best_of_3_orm": out(draft_ok, 30, "sample_0"),
        "glore_orm": out(draft_ok, 30, "draft"),
        "self_consistency_2": out(draft_ok, 20, "sample_1"),
        "self_consistency_3": out(bo3, 30, "sample_1"),
        "self_consistency_5": out(True, 50, "sample_1"),
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
    comparisons = how["comparisons"]
    assert set(comparisons) == {
        "glore_vs_greedy",
        "glore_vs_best_of_3",
        "glore_vs_global_only",
        "glore_vs_local_only",
        "best_of_3_vs_greedy",
        "glore_vs_glore_orm",
        "glore_orm_vs_greedy",
        "glore_orm_vs_best_of_3_orm",
        "best_of_3_orm_vs_greedy",
        "glore_vs_self_consistency",
    }
    assert comparisons["glore_vs_best_of_3"]["difference"] == 0.25
    assert comparisons["glore_vs_greedy"]["difference"] == 0.5
    assert comparisons["best_of_3_vs_greedy"]["difference"] == 0.25
    # GLoRe spends 30 tokens per question: self-consistency at 3 samples (30) is the largest
    # budget that does not exceed it (5 samples, right everywhere, spends 50).
    sc = comparisons["glore_vs_self_consistency"]
    assert (sc["a"], sc["b"], sc["difference"]) == ("glore", "self_consistency_3", 0.25)
    for c in comparisons.values():
        assert c["sided"] == "two-sided" and c["questions"] == 4
        assert c["ci95"][0] <= c["difference"] <= c["ci95"][1]
    # (right, wrong) pairs: a 1 + tie, b 1 + 1, c 1 + tie, d none -> 5 of 6 in 3 questions
    assert how["orm_ranking"] == {
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
    # Per draft, the SORM's step hits minus the ORM's @0.5: a 0, b +1, c +1, d +1 of 8 steps.
    sorm_vs_orm = exact["sorm_vs_orm"]["@0.5"]
    assert sorm_vs_orm["step_accuracy"]["difference"] == pytest.approx(3 / 8)
    # First errors @0.5: the SORM finds all 4; the ORM only a's (none) -> +3 of 4 drafts.
    assert sorm_vs_orm["first_error_accuracy"]["difference"] == pytest.approx(3 / 4)
    # Four questions can't make anything significant: no claim reproduces, and the words say so.
    how_claim = report["claims"]["how"]
    assert how_claim["reproduces"] is False
    assert how_claim["statement"].startswith("Does not reproduce.")
    assert [c["against"] for c in how_claim["checks"] if c["required"]] == [
        "greedy",
        "best-of-3",
        "global-only",
        "local-only",
    ]
    where_claim = report["claims"]["where"]
    assert [c["against"] for c in where_claim["checks"] if c["required"]] == [
        "ORM, step accuracy vs exact labels"  # no V* labels here, so the exact ones stand in
    ]
    assert report["when"]["orm_roc_auc"] == 1.0  # the one right draft has the top ORM score
    assert report["paper_context"] == PAPER_CONTEXT


def _won_by_glore(pid: str, *, local_only_too: bool = False) -> QuestionRecord:
    r = record(pid, draft_ok=False, glob=False, local=False, bo3=False, orm=[0.9], sorm=[0.1],
               exact=[False], draft_orm=0.2)  # fmt: skip
    r.methods["glore"] = Outcome("1", True, 30, "local")
    r.methods["local_only"] = Outcome("1" if local_only_too else "2", local_only_too, 20, "local")
    return r


def test_a_claim_reproduces_only_when_it_holds_against_every_comparator_the_paper_names() -> None:
    sweep = [_won_by_glore(f"q{i}") for i in range(30)]
    claim = build_report(sweep, sweep, meta={})["claims"]["how"]
    assert claim["reproduces"] is True
    assert claim["statement"].startswith("Reproduces: ahead at p < 0.05 against every")
    assert "local-only (+100.0 points, p = 0.0005)" in claim["statement"]

    tied = [_won_by_glore(f"q{i}", local_only_too=True) for i in range(30)]
    claim = build_report(tied, tied, meta={})["claims"]["how"]
    assert claim["reproduces"] is False
    assert "Not against: local-only (+0.0 points, p = 1)." in claim["statement"]
    assert "Ahead at p < 0.05 against: greedy (+100.0 points" in claim["statement"]
    # Self-consistency is reported, but is not a comparator the paper names.
    assert (
        "Also measured (not deciding): self-consistency at ≤ GLoRe's tokens (self_consistency_3)"
        in (claim["statement"])
    )


def test_self_consistency_comparison_is_none_when_every_row_costs_more_than_glore() -> None:
    rows = {"glore": {"tokens_per_question": 10.0}} | {
        name: {"tokens_per_question": 11.0} for name in SELF_CONSISTENCY_ROWS
    }
    assert self_consistency_comparator(rows) is None
    rows["self_consistency_2"]["tokens_per_question"] = 10.0
    assert self_consistency_comparator(rows) == "self_consistency_2"


def test_the_sorm_threshold_is_the_best_step_accuracy_on_validation_exact_labels() -> None:
    # SORM readings of RECORDS separate the exact labels at any threshold in (0.3, 0.6].
    t = sorm_threshold(RECORDS)
    assert 0.3 < t <= 0.6
    assert t == build_report(RECORDS, RECORDS, meta={})["where"]["exact"]["sorm"]["best_threshold"]
    assert sorm_threshold([]) == 0.5


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
    assert "| glore − best_of_3 | +25.0 pts |" in md
    assert "self_consistency_3, the self-consistency row spending the most tokens" in md
    assert report["claims"]["how"]["statement"] in md
    assert to_markdown(report) == md


def test_the_report_describes_the_default_reranker_and_measures_every_one_on_the_same_pairs() -> (
    None
):
    from engines.reranker import Reranker
    from training.evaluation.runner import RankedCandidate

    def cand(label: str, ok: bool, orm_logit: float, lp_mean: float) -> RankedCandidate:
        feats = {"orm_logit": orm_logit, "lp_mean": lp_mean, "lp_min": lp_mean,
                 "lp_sum": lp_mean, "lp_low_share": 0.0}  # fmt: skip
        return RankedCandidate(label, ok, feats)

    records = []
    for r in RECORDS:
        r = QuestionRecord.from_dict(r.to_dict())
        # The ORM prefers the wrong candidate, the likelihood the right one, in both methods.
        r.ranked = {
            "glore": [cand("draft", True, 0.5, -0.2), cand("global", False, 1.0, -0.9),
                      cand("local", False, 0.2, -1.5)],
            "best_of_3": [cand("sample_0", False, 2.0, -1.0), cand("sample_1", True, 1.0, -0.1)],
        }  # fmt: skip
        records.append(r)
    default = Reranker("lp_only", ("lp_mean",), (1.0,), description="fitted")
    report = build_report(records, records, meta={}, default=default, rerankers={})
    how = report["how"]
    assert how["reranker"]["name"] == "lp_only" and how["reranker"]["weights"] == [1.0]
    assert how["reranker"]["glore"]["pairwise"] == 1.0 and how["reranker"]["glore"]["pairs"] == 8
    assert how["reranker"]["best_of_3"]["accuracy"] == 1.0
    rows = {row["name"]: row for row in how["rerankers"]["rows"]}
    assert set(rows) == {"orm", "policy_mean_logprob", "lp_only"}
    assert rows["lp_only"]["default"] and not rows["orm"]["default"]
    # ORM: per question, right (0.5) beats local (0.2) but not global (1.0) -> 1 of 2
    assert rows["orm"]["glore"]["pairwise"] == 0.5 and rows["orm"]["glore"]["pairs"] == 8
    assert rows["orm"]["best_of_3"] == {"pairwise": 0.0, "pairs": 4, "questions_with_pairs": 4,
                                        "accuracy": 0.0, "questions": 4}  # fmt: skip
    assert (
        "GLoRe (global and local refinement, reranked by lp_only)"
        in (report["claims"]["how"]["claim"])
    )
    md = to_markdown(report)
    assert "## Reranker: lp_only" in md and "| **lp_only** | lp_mean | 100.0% (8) |" in md
