"""Turn evaluation records into the paper's tables: report.json, report.md and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.reranker import BUILTIN, ORM_RERANKER, Reranker
from service.pipeline.types import StrategyName
from training.evaluation.metrics import (
    best_threshold,
    bootstrap_ci,
    first_error_accuracy,
    first_error_hits,
    fix_break,
    flag_incorrect_pr_curve,
    paired_bootstrap,
    step_accuracy,
    step_accuracy_by_index,
    step_hits,
    within_question_pairwise,
)
from training.evaluation.rerankers import measure, reranker_table
from training.evaluation.runner import METHODS, RANKED_METHODS, QuestionRecord, oracle_outcomes
from training.metrics import accuracy_at, roc_auc

REPORT_VERSION = 2

# The paper's own headline, for context (Havrilla et al., 2024, LLaMA-2 13B on GSM8K).
PAPER_CONTEXT = {
    "model": "LLaMA-2 13B (RL-fine-tuned policy)",
    "data": "GSM8K test",
    "greedy_accuracy": 0.53,
    "glore_accuracy": 0.65,
    "glore_method": "global + local refinement, ORM rerank",
}

THRESHOLD_GRID = [i / 100 for i in range(5, 96)]
PR_THRESHOLDS = [i / 20 for i in range(0, 21)]
PLOTS = ("accuracy_vs_tokens", "step_accuracy_by_index", "orm_histograms", "pr_curve")

# A claim holds against a comparator when it is ahead at p below this (two-sided p, and ahead).
ALPHA = 0.05
# The paper's "how" claim: GLoRe beats each of these (Havrilla et al., 2024, Table 4).
HOW_COMPARATORS = {
    "greedy": "greedy",
    "best_of_3": "best-of-3",
    "global_only": "global-only",
    "local_only": "local-only",
}
# Every paired comparison of how.comparisons, as (a, b): a minus b. The `_orm` rows are the
# paper's GLoRe and best-of-3 as published (the ORM reranks), beside the run's default reranker.
COMPARISONS = (
    *(("glore", b) for b in HOW_COMPARATORS),
    ("best_of_3", "greedy"),
    ("glore", "glore_orm"),
    ("glore_orm", "greedy"),
    ("glore_orm", "best_of_3_orm"),
    ("best_of_3_orm", "greedy"),
)
SELF_CONSISTENCY_ROWS = tuple(
    m.name for m in METHODS if m.strategy is StrategyName.SELF_CONSISTENCY
)


def _scored(records: Sequence[QuestionRecord]) -> list[QuestionRecord]:
    """Records whose draft has steps with readings (an empty draft has nothing to locate)."""
    return [r for r in records if r.draft_steps and r.orm_steps and r.sorm_steps]


def _labels(records: Sequence[QuestionRecord], truth: str) -> list[list[bool]] | None:
    if truth == "exact":
        return [r.exact_prefix_ok for r in records]
    if any(r.vstar is None for r in records):
        return None
    return [list(r.vstar or []) for r in records]


def _scores(records: Sequence[QuestionRecord], model: str) -> list[list[float]]:
    return [r.orm_steps if model == "orm" else r.sorm_steps for r in records]


def _mean_ci(values: Sequence[float], seed: int) -> dict[str, float]:
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"value": sum(values) / len(values), "ci95": [lo, hi]}


def gate_threshold(val: Sequence[QuestionRecord]) -> float:
    """The ORM threshold below which refining pays most on validation (ties: nearest 0.5)."""

    def acc(t: float) -> float:
        return sum(
            r.draft_correct if r.candidate_orm["draft"] >= t else r.methods["glore"].correct
            for r in val
        ) / len(val)

    return max(THRESHOLD_GRID, key=lambda t: (acc(t), -abs(t - 0.5)))


def sorm_threshold(val: Sequence[QuestionRecord]) -> float:
    """The SORM threshold with the best step-level accuracy against the exact step labels of the
    validation drafts (ties: nearest 0.5); 0.5 when validation has no scored draft. It is the
    `where.exact.sorm.best_threshold` of the report, and what GLoRe and `glore serve` use."""
    scored = _scored(val)
    if not scored:
        return 0.5
    return best_threshold(_scores(scored, "sorm"), _labels(scored, "exact") or [], THRESHOLD_GRID)


def where_section(
    val: Sequence[QuestionRecord], test: Sequence[QuestionRecord], seed: int
) -> dict[str, Any]:
    """Step-level error detection: ORM against SORM, against exact and V* ground truth."""
    val_s, test_s = _scored(val), _scored(test)
    out: dict[str, Any] = {
        "solutions": len(test_s),
        "steps": sum(len(r.draft_steps) for r in test_s),
    }
    for truth in ("exact", "vstar"):
        y_test, y_val = _labels(test_s, truth), _labels(val_s, truth) or _labels(val_s, "exact")
        if y_test is None or y_val is None:
            out[truth] = None
            continue
        section: dict[str, Any] = {}
        thresholds: dict[str, float] = {}
        for model in ("orm", "sorm"):
            s_test = _scores(test_s, model)
            t_best = best_threshold(_scores(val_s, model), y_val, THRESHOLD_GRID)
            thresholds[model] = t_best
            section[model] = {
                "step_accuracy@0.5": step_accuracy(s_test, y_test, 0.5),
                "step_accuracy@best": step_accuracy(s_test, y_test, t_best),
                "best_threshold": t_best,
                "first_error_accuracy@0.5": first_error_accuracy(s_test, y_test, 0.5),
                "first_error_accuracy@best": first_error_accuracy(s_test, y_test, t_best),
                "by_step_index@0.5": [
                    {"step": i, "accuracy": a, "count": n}
                    for i, a, n in step_accuracy_by_index(s_test, y_test, 0.5)
                ],
            }
        section["sorm_vs_orm"] = sorm_vs_orm(test_s, y_test, thresholds, seed)
        out[truth] = section
    if all(r.vstar is not None for r in test_s):
        pairs = [
            (v, e) for r in test_s for v, e in zip(r.vstar or [], r.exact_prefix_ok, strict=True)
        ]
        out["vstar_exact_disagreement"] = sum(v != e for v, e in pairs) / max(len(pairs), 1)
    correct = [r.draft_correct for r in test_s]
    out["final_answer_accuracy@0.5"] = {
        model: accuracy_at([s[-1] for s in _scores(test_s, model)], correct, 0.5)
        for model in ("orm", "sorm")
    }
    return out


def sorm_vs_orm(
    records: Sequence[QuestionRecord],
    labels: Sequence[Sequence[bool]],
    best: dict[str, float],
    seed: int,
) -> dict[str, Any]:
    """SORM minus ORM, in step accuracy and first-error accuracy, at 0.5 and at each model's
    validation-chosen threshold, resampling questions (all steps of a draft move together)."""
    steps = [float(len(y)) for y in labels]
    out: dict[str, Any] = {}
    for key, t in (("@0.5", {"orm": 0.5, "sorm": 0.5}), ("@best", best)):
        sorm, orm = _scores(records, "sorm"), _scores(records, "orm")
        step = paired_bootstrap(
            step_hits(sorm, labels, t["sorm"]),
            step_hits(orm, labels, t["orm"]),
            weights=steps,
            seed=seed,
        )
        first = paired_bootstrap(
            first_error_hits(sorm, labels, t["sorm"]),
            first_error_hits(orm, labels, t["orm"]),
            seed=seed,
        )
        out[key] = {"step_accuracy": step.to_dict(), "first_error_accuracy": first.to_dict()}
    return out


def when_section(test: Sequence[QuestionRecord]) -> dict[str, Any]:
    """The ORM deciding whether to refine: precision and recall at flagging wrong drafts."""
    scores = [r.candidate_orm["draft"] for r in test]
    correct = [r.draft_correct for r in test]
    curve = flag_incorrect_pr_curve(scores, correct, PR_THRESHOLDS)
    auc = roc_auc(scores, correct)  # None when every draft is right, or every one wrong
    return {
        "draft_accuracy": sum(correct) / len(correct),
        "orm_roc_auc": auc,
        "pr_curve": [
            {
                "threshold": p.threshold,
                "precision": p.precision,
                "recall": p.recall,
                "flagged": p.flagged,
            }
            for p in curve
        ],
    }


def reranker_section(
    test: Sequence[QuestionRecord], default: Reranker, rerankers: Mapping[str, Reranker]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`how.reranker` (the default reranker: what it reads, its weights, and how it ranks
    GLoRe's candidates and best-of-3's samples) and `how.rerankers` (every verifier measured on
    those same candidates, the paper's ORM included)."""
    known = {**BUILTIN, **rerankers, default.name: default}
    described = {
        **default.to_dict(),
        **{method: measure(default, test, method) for method in RANKED_METHODS},
    }
    return described, reranker_table(test, known, default.name)


def how_section(
    test: Sequence[QuestionRecord],
    seed: int,
    *,
    default: Reranker = ORM_RERANKER,
    rerankers: Mapping[str, Reranker] | None = None,
) -> dict[str, Any]:
    """Final-answer accuracy of every strategy, with fix and break rates, token cost, the
    rerankers and the paired comparisons (records from an older evaluation may lack newer
    methods' rows)."""
    names = [m.name for m in METHODS if all(m.name in r.methods for r in test)]
    outcomes = {name: [r.methods[name] for r in test] for name in names}
    oracles = [oracle_outcomes(r) for r in test]
    for name in ("oracle_best_candidate", "oracle_refine_when_wrong"):
        outcomes[name] = [o[name] for o in oracles]
    draft_ok = [r.draft_correct for r in test]
    rows = {}
    for name, outs in outcomes.items():
        correct = [float(o.correct) for o in outs]
        fb = fix_break(draft_ok, [o.correct for o in outs])
        rows[name] = {
            "accuracy": _mean_ci(correct, seed),
            "tokens_per_question": sum(o.tokens for o in outs) / len(outs),
            "fix_rate": fb.fix_rate,
            "break_rate": fb.break_rate,
            "fixed": fb.fixed,
            "broken": fb.broken,
        }
    refiners = {}
    for kind in ("global", "local"):
        have = [r for r in test if kind in r.candidates]
        if have:
            fb = fix_break(
                [r.draft_correct for r in have], [r.candidates[kind].correct for r in have]
            )
            refiners[kind] = {
                "fix_rate": fb.fix_rate,
                "break_rate": fb.break_rate,
                "fixed": fb.fixed,
                "broken": fb.broken,
                "wrong_drafts": fb.wrong_drafts,
                "right_drafts": fb.right_drafts,
            }
    kinds = [sorted(r.candidates) for r in test]
    ranking = within_question_pairwise(
        [[r.candidate_orm[k] for k in ks] for r, ks in zip(test, kinds, strict=True)],
        [[r.candidates[k].correct for k in ks] for r, ks in zip(test, kinds, strict=True)],
    )
    described, table = reranker_section(test, default, rerankers or {})
    return {
        "methods": rows,
        "refiners": refiners,
        "reranker": described,
        "rerankers": table,
        # The ORM's own ranking of GLoRe's {draft, global, local} (read from every record).
        "orm_ranking": {
            "within_question_pairwise_accuracy": ranking.accuracy,
            "pairs": ranking.pairs,
            "questions": ranking.questions,
        },
        "comparisons": comparisons(test, rows, seed),
    }


def self_consistency_comparator(rows: dict[str, Any]) -> str | None:
    """The self-consistency row that GLoRe is compared with at equal or fewer tokens: of those
    spending at most GLoRe's tokens per question, the one spending most; None if none does."""
    budget = rows["glore"]["tokens_per_question"]
    fits = [
        (rows[name]["tokens_per_question"], name)
        for name in SELF_CONSISTENCY_ROWS
        if name in rows and rows[name]["tokens_per_question"] <= budget
    ]
    return max(fits)[1] if fits else None


def comparisons(
    test: Sequence[QuestionRecord], rows: dict[str, Any], seed: int
) -> dict[str, dict[str, Any] | None]:
    """`{a}_vs_{b}`: a's accuracy minus b's on the same questions, paired bootstrap over them."""

    def compare(a: str, b: str) -> dict[str, Any]:
        correct = {m: [float(r.methods[m].correct) for r in test] for m in (a, b)}
        return {"a": a, "b": b, **paired_bootstrap(correct[a], correct[b], seed=seed).to_dict()}

    out: dict[str, dict[str, Any] | None] = {
        f"{a}_vs_{b}": compare(a, b) for a, b in COMPARISONS if a in rows and b in rows
    }
    if any(name in rows for name in SELF_CONSISTENCY_ROWS):
        sc = self_consistency_comparator(rows)
        out["glore_vs_self_consistency"] = None if sc is None else compare("glore", sc)
    return out


# ------------------------------------------------------------------ claims


def _check(comparison: dict[str, Any] | None, label: str, *, required: bool) -> dict[str, Any]:
    """One comparator of a claim: it holds when the claimant is ahead at p < ALPHA."""
    if comparison is None:
        return {"against": label, "required": required, "holds": False, "measured": False}
    return {
        "against": label,
        "required": required,
        "measured": True,
        "difference": comparison["difference"],
        "p_value": comparison["p_value"],
        "holds": comparison["difference"] > 0 and comparison["p_value"] < ALPHA,
    }


def _verdict(checks: Sequence[dict[str, Any]]) -> str:
    """The claim's status in words, generated from its checks (never written by hand)."""

    def say(c: dict[str, Any]) -> str:
        if not c["measured"]:
            return f"{c['against']} (not measured)"
        return f"{c['against']} ({100 * c['difference']:+.1f} points, p = {c['p_value']:.3g})"

    required = [c for c in checks if c["required"]]
    held = [say(c) for c in required if c["holds"]]
    missed = [say(c) for c in required if not c["holds"]]
    if not missed:
        text = (
            f"Reproduces: ahead at p < {ALPHA} against every comparator the paper names: "
            + "; ".join(held)
            + "."
        )
    else:
        text = (
            f"Does not reproduce. Ahead at p < {ALPHA} against: "
            + ("; ".join(held) or "none")
            + ". Not against: "
            + "; ".join(missed)
            + "."
        )
    extra = [c for c in checks if not c["required"]]
    if extra:
        text += " Also measured (not deciding): " + "; ".join(
            f"{say(c)}: {'holds' if c['holds'] else 'does not hold'}" for c in extra
        )
        text += "."
    return text


def claims_section(where: dict[str, Any], how: dict[str, Any]) -> dict[str, Any]:
    """The paper's claims, each with its checks against the comparators the paper names (which
    decide "reproduces") and the further ones this project measures."""
    comps = how["comparisons"]
    sc = comps.get("glore_vs_self_consistency")
    how_checks = [
        _check(comps.get(f"glore_vs_{b}"), label, required=True)
        for b, label in HOW_COMPARATORS.items()
    ]
    if "glore_vs_self_consistency" in comps:
        label = f"self-consistency at ≤ GLoRe's tokens ({sc['b'] if sc else 'no such row'})"
        how_checks.append(_check(sc, label, required=False))
    # The paper measures "where" against V* labels; without them, the exact labels stand in.
    paper_truth = "vstar" if where.get("vstar") else "exact"
    where_checks = []
    for truth in ("vstar", "exact"):
        if not where.get(truth):
            continue
        best = where[truth]["sorm_vs_orm"]["@best"]
        name = "V*" if truth == "vstar" else "exact"
        where_checks += [
            _check(
                best["step_accuracy"],
                f"ORM, step accuracy vs {name} labels",
                required=truth == paper_truth,
            ),
            _check(
                best["first_error_accuracy"],
                f"ORM, first-error accuracy vs {name} labels",
                required=False,
            ),
        ]
    claims = {
        "where": {
            "claim": "The SORM finds step-level errors better than the ORM (each at its "
            "validation-chosen threshold).",
            "checks": where_checks,
        },
        "how": {
            "claim": "GLoRe (global and local refinement, reranked by "
            f"{how.get('reranker', {}).get('name', 'orm')}) beats greedy, best-of-3, "
            "global-only and local-only.",
            "checks": how_checks,
        },
    }
    for claim in claims.values():
        required = [c for c in claim["checks"] if c["required"]]
        claim["reproduces"] = bool(required) and all(c["holds"] for c in required)
        claim["statement"] = _verdict(claim["checks"])
    return claims


# The targets: greedy accuracy on a held-out part of the generator may fall at most
# this far (in accuracy, 0.10 = 10 points) below in-distribution.
GENERALISATION_TARGETS = {"heldout_names": 0.10, "heldout_templates": 0.20, "made_up": 0.10}
GENERALISATION_LABELS = {
    "in_distribution": "in-distribution (the evaluated split)",
    "heldout_names": "held-out real names and objects",
    "heldout_templates": "held-out phrasing templates",
    "made_up": "made-up names and objects (none in training)",
}


def generalisation_section(
    in_distribution: Sequence[bool],
    heldout: Mapping[str, Sequence[bool] | str],
    seed: int,
) -> dict[str, Any]:
    """Greedy accuracy in distribution and on each held-out part, each part's gap to
    in-distribution (points = accuracy difference) and whether the issue's target is met.

    `heldout` maps a part to its per-question correctness, or to the reason it was not
    measured (the task config has nothing left to hold out, or is not synthetic)."""
    ind = _mean_ci([float(c) for c in in_distribution], seed)
    out: dict[str, Any] = {"in_distribution": {"accuracy": ind, "n": len(in_distribution)}}
    for part, target in GENERALISATION_TARGETS.items():
        got = heldout.get(part, "not measured")
        if isinstance(got, str) or not got:
            out[part] = {"accuracy": None, "n": 0, "target_gap": target, "met": None,
                         "note": got or "no questions"}  # fmt: skip
            continue
        acc = _mean_ci([float(c) for c in got], seed)
        gap = ind["value"] - acc["value"]
        out[part] = {
            "accuracy": acc,
            "n": len(got),
            "gap": gap,
            "target_gap": target,
            "met": round(gap, 9) <= target,  # 0.8 - 0.7 is 0.10000000000000009 in floats
        }
    return out


def build_report(
    val: Sequence[QuestionRecord],
    test: Sequence[QuestionRecord],
    *,
    meta: dict[str, Any],
    seed: int = 0,
    default: Reranker = ORM_RERANKER,
    rerankers: Mapping[str, Reranker] | None = None,
    heldout: Mapping[str, Sequence[bool] | str] | None = None,
) -> dict[str, Any]:
    """The whole report. `default` is the reranker the evaluated strategies used (the run's
    choice); `rerankers` are the further ones measured beside it (the built-ins always are).
    `heldout`: greedy correctness on each held-out part of the generator (see
    `generalisation_section`); None leaves the section out (null)."""
    if not test:
        raise ValueError("no test records to report on")
    where = where_section(val, test, seed)
    how = how_section(test, seed, default=default, rerankers=rerankers)
    generalisation = None
    if heldout is not None:
        greedy = [r.methods["greedy"].correct for r in test]
        generalisation = generalisation_section(greedy, heldout, seed)
    return {
        "version": REPORT_VERSION,
        "meta": meta,
        "paper_context": PAPER_CONTEXT,
        "where": where,
        "when": when_section(test),
        "how": how,
        "claims": claims_section(where, how),
        "generalisation": generalisation,
    }


# ------------------------------------------------------------------ markdown


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:+.1f} pts"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def to_markdown(report: dict[str, Any]) -> str:
    meta, how, where, when = report["meta"], report["how"], report["where"], report["when"]
    paper = PAPER_CONTEXT
    split = meta.get("split", "test")
    lines = [
        f"# GLoRe evaluation: {meta.get('run', '')}",
        "",
        f"Split: {split} (test evaluations of this run so far: "
        f"{meta.get('test_evaluations', '–')}; dev: {meta.get('dev_evaluations', '–')}).",
        "",
        f"{meta.get('n_test')} {split} questions ({meta.get('data')}), {meta.get('n_val')} "
        f"validation questions for thresholds, seed {meta.get('seed')}, backend "
        f"{meta.get('backend')}. 95% bootstrap confidence intervals; paired bootstrap p-values.",
        "",
        f"Paper, for context: {paper['model']} on {paper['data']}: "
        f"{_pct(paper['greedy_accuracy'])} greedy → {_pct(paper['glore_accuracy'])} with "
        f"{paper['glore_method']}.",
        "",
        "## How: final-answer accuracy by strategy",
        "",
    ]
    rows = []
    for name, row in how["methods"].items():
        lo, hi = row["accuracy"]["ci95"]
        rows.append(
            [
                name,
                _pct(row["accuracy"]["value"]),
                f"{_pct(lo)}–{_pct(hi)}",
                f"{row['tokens_per_question']:.1f}",
                _pct(row["fix_rate"]),
                _pct(row["break_rate"]),
            ]
        )
    lines += _table(
        ["strategy", "accuracy", "95% CI", "tokens/question", "fix rate", "break rate"], rows
    )
    lines += [
        "",
        "Paired comparisons (a − b on the same questions; bootstrap over questions, two-sided p):",
        "",
    ]
    lines += _table(
        ["comparison", "difference", "95% CI", "p"],
        [
            [
                f"{c['a']} − {c['b']}",
                _points(c["difference"]),
                f"{_points(c['ci95'][0])} to {_points(c['ci95'][1])}",
                f"{c['p_value']:.4f}",
            ]
            for c in how.get("comparisons", {}).values()
            if c is not None
        ],
    )
    if "glore_vs_self_consistency" in how.get("comparisons", {}):
        sc = how["comparisons"]["glore_vs_self_consistency"]
        lines += [
            "",
            "GLoRe against self-consistency at equal or fewer tokens: "
            + (
                f"{sc['b']}, the self-consistency row spending the most tokens per question "
                "without exceeding GLoRe's."
                if sc
                else "no self-consistency row spends as few tokens per question as GLoRe."
            ),
        ]
    lines += ["", "Refiners on their own (candidate vs draft, GLoRe with refine=always):", ""]
    lines += _table(
        ["refiner", "fix rate", "break rate", "fixed / wrong drafts", "broken / right drafts"],
        [
            [
                kind,
                _pct(r["fix_rate"]),
                _pct(r["break_rate"]),
                f"{r['fixed']} / {r['wrong_drafts']}",
                f"{r['broken']} / {r['right_drafts']}",
            ]
            for kind, r in how["refiners"].items()
        ],
    )
    lines += _reranker_markdown(how)
    lines += ["", "## Where: step-level error detection (ORM vs SORM)", ""]
    titles = {"exact": "exact step labels (task checker)", "vstar": "V* labels (fresh rollouts)"}
    for truth, title in titles.items():
        sec = where.get(truth)
        if not sec:
            continue
        lines += [
            f"Against {title}, {where['steps']} steps of {where['solutions']} greedy drafts:",
            "",
        ]
        lines += _table(
            [
                "model",
                "step acc @0.5",
                "step acc @best",
                "best threshold (val)",
                "first-error acc @0.5",
                "first-error acc @best",
            ],
            [
                [
                    model.upper(),
                    _pct(sec[model]["step_accuracy@0.5"]),
                    _pct(sec[model]["step_accuracy@best"]),
                    f"{sec[model]['best_threshold']:.2f}",
                    _pct(sec[model]["first_error_accuracy@0.5"]),
                    _pct(sec[model]["first_error_accuracy@best"]),
                ]
                for model in ("orm", "sorm")
            ],
        )
        lines += ["", "SORM − ORM (bootstrap over drafts, all steps of a draft together):", ""]
        lines += _table(
            ["thresholds", "measure", "difference", "95% CI", "p"],
            [
                [
                    at,
                    measure.replace("_", " "),
                    _points(c["difference"]),
                    f"{_points(c['ci95'][0])} to {_points(c['ci95'][1])}",
                    f"{c['p_value']:.4f}",
                ]
                for at, by_measure in sec["sorm_vs_orm"].items()
                for measure, c in by_measure.items()
            ],
        )
        lines.append("")
    if "vstar_exact_disagreement" in where:
        share = _pct(where["vstar_exact_disagreement"])
        lines.append(f"V* labels disagree with the exact labels on {share} of steps.")
    fa = where["final_answer_accuracy@0.5"]
    auc = when["orm_roc_auc"]
    lines += [
        "",
        "Final-answer accuracy of the last-step score @0.5: "
        f"ORM {_pct(fa['orm'])}, SORM {_pct(fa['sorm'])}.",
        "",
        "## When: the ORM flagging wrong drafts",
        "",
        f"Draft accuracy {_pct(when['draft_accuracy'])}; ORM ROC-AUC "
        + ("–" if auc is None else f"{auc:.3f}")
        + f"; ORM-gated GLoRe uses threshold {meta.get('gate_threshold')} (best on validation). "
        f"GLoRe places local critiques with SORM threshold {meta.get('sorm_threshold')} (best "
        "step accuracy against exact labels on validation).",
        "",
        "## Claims",
        "",
    ]
    for name, claim in report["claims"].items():
        verdict = "reproduces" if claim["reproduces"] else "does not reproduce"
        lines.append(f"- **{name}** ({verdict}): {claim['claim']} {claim['statement']}")
    lines += _generalisation_markdown(report.get("generalisation"))
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name}.png)" for name in PLOTS]
    return "\n".join(lines) + "\n"


def _generalisation_markdown(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    lines = [
        "",
        "## Generalisation: held-out parts of the generator",
        "",
        "Greedy accuracy on questions built from parts of the task generator that training "
        "never saw, beside the evaluated split's (targets: held-out names and objects within "
        "10 points of in-distribution, held-out phrasings within 20).",
        "",
    ]
    rows = []
    for part, label in GENERALISATION_LABELS.items():
        row = section.get(part) or {}
        acc = row.get("accuracy")
        if acc is None:
            rows.append([label, "–", "–", "0", "–", f"not measured: {row.get('note', '')}"])
            continue
        lo, hi = acc["ci95"]
        gap = "" if "gap" not in row else _points(0.0 - row["gap"])
        target = (
            ""
            if "target_gap" not in row
            else f"≥ {_points(-row['target_gap'])}: " + ("met" if row["met"] else "missed")
        )
        rows.append([label, _pct(acc["value"]), f"{_pct(lo)}–{_pct(hi)}", str(row["n"]), gap,
                     target])  # fmt: skip
    lines += _table(["questions", "greedy accuracy", "95% CI", "n", "vs in-distribution",
                     "target"], rows)  # fmt: skip
    return lines


def _reranker_markdown(how: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    rr, table = how.get("reranker"), how.get("rerankers")
    if rr:
        terms = ", ".join(
            f"{w:+.3f} × {f}" for f, w in zip(rr["features"], rr["weights"], strict=True)
        )
        lines += [
            "",
            f"## Reranker: {rr['name']}",
            "",
            f"{rr.get('description') or rr['name']}. Score = {terms} (features standardised; "
            "only the order within one question matters). GLoRe, global-only, local-only and "
            "best-of-3 rank their candidates with it; the `_orm` rows rank with the paper's ORM.",
        ]
    if table and table["rows"]:
        lines += [
            "",
            "Every verifier on the same candidates: within-question pairwise accuracy (right "
            "scored above wrong, 50% is a coin flip; pairs in brackets) and the accuracy its pick "
            "would give.",
            "",
        ]
        header = ["reranker", "features"]
        for method in table["methods"]:
            header += [f"{method} pairwise", f"{method} accuracy"]
        rows = []
        for row in table["rows"]:
            cells = [f"**{row['name']}**" if row["default"] else row["name"]]
            cells.append(", ".join(row["features"]))
            for method in table["methods"]:
                m = row[method]
                cells += [f"{_pct(m['pairwise'])} ({m['pairs']})", _pct(m["accuracy"])]
            rows.append(cells)
        lines += _table(header, rows)
    orm = how.get("orm_ranking")
    if orm and orm["within_question_pairwise_accuracy"] is not None:
        lines += [
            "",
            "The ORM's own ranking of GLoRe's candidates: of the (right, wrong) pairs inside one "
            f"question ({orm['pairs']} pairs in {orm['questions']} questions), it scores the "
            f"right one higher in {_pct(orm['within_question_pairwise_accuracy'])}.",
        ]
    return lines


# ------------------------------------------------------------------ plots


def write_plots(report: dict[str, Any], test: Sequence[QuestionRecord], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, row in report["how"]["methods"].items():
        acc = row["accuracy"]["value"]
        lo, hi = row["accuracy"]["ci95"]
        ax.errorbar(
            row["tokens_per_question"], acc, yerr=[[acc - lo], [hi - acc]], fmt="o", capsize=3
        )
        ax.annotate(
            name,
            (row["tokens_per_question"], acc),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xlabel("tokens generated per question")
    ax.set_ylabel("final-answer accuracy")
    ax.set_title("Accuracy against cost, per strategy")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "accuracy_vs_tokens.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for truth, style in (("exact", "-"), ("vstar", "--")):
        sec = report["where"].get(truth)
        if not sec:
            continue
        for model in ("orm", "sorm"):
            pts = sec[model]["by_step_index@0.5"]
            ax.plot(
                [p["step"] + 1 for p in pts],
                [p["accuracy"] for p in pts],
                style,
                marker="o",
                label=f"{model.upper()} vs {truth}",
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step (1 = first)")
    ax.set_ylabel("step-level accuracy @0.5")
    ax.set_title("Step-level accuracy by step index")
    ax.legend()
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "step_accuracy_by_index.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    right = [r.candidate_orm["draft"] for r in test if r.draft_correct]
    wrong = [r.candidate_orm["draft"] for r in test if not r.draft_correct]
    bins = [i / 20 for i in range(21)]
    ax.hist(right, bins=bins, alpha=0.6, label=f"correct drafts ({len(right)})")
    ax.hist(wrong, bins=bins, alpha=0.6, label=f"incorrect drafts ({len(wrong)})")
    ax.set_xlabel("ORM score of the draft")
    ax.set_ylabel("drafts")
    ax.set_title("ORM scores of correct and incorrect drafts")
    ax.legend()
    paths.append(_save(fig, out / "orm_histograms.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    pts = report["when"]["pr_curve"]
    ax.plot([p["recall"] for p in pts], [p["precision"] for p in pts], marker=".")
    ax.set_xlabel("recall (wrong drafts flagged)")
    ax.set_ylabel("precision (flagged drafts that are wrong)")
    ax.set_title("When to refine: ORM flags on drafts")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "pr_curve.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    report: dict[str, Any], test: Sequence[QuestionRecord], out: Path
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(to_markdown(report))
    plots = write_plots(report, test, out)
    return {"json": out / "report.json", "md": out / "report.md", **{p.stem: p for p in plots}}
