"""The dev-set ablation of rerankers: which features and which training samples rank best.

Every variant is fitted exactly as the reranker stage fits one (training.reranker), on the run's
own outcome-labelled policy samples, and then measured on the candidates of a dev evaluation
(`glore eval --split dev`: its records keep every candidate's features). Nothing here reads the
test split. The result is `rerankers.json` and `rerankers.md` beside the dev records:

    python -m training.reranker_ablation --run runs/tiny --dev reports/tiny-dev

Rows: the built-in rerankers (the paper's ORM, the policy's untrained mean log-probability), then
each (training samples x feature set) variant, with its within-question pairwise accuracy and the
accuracy its pick gives on GLoRe's candidates and on best-of-3's samples, and its fit time (the
features are read once, as the reranker stage reads them: its `feature_seconds` and
`candidate_seconds` in the manifest).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.reranker import BUILTIN, Reranker
from training.config import RunConfig, load_config
from training.evaluation.rerankers import measure
from training.evaluation.runner import RANKED_METHODS, QuestionRecord
from training.graph import stage_seed
from training.reranker import (
    Row,
    candidate_questions,
    candidate_rows,
    collect_samples,
    fit_reranker,
    load_rows,
    read_features,
    sample_rows,
    save_rows,
    split_questions,
)
from training.rollouts import read_jsonl, read_rollouts
from training.stages.reranker import ROWS_CACHE, SPEC
from training.tasks import load_problems
from training.vstar import DraftRollout

# Feature sets worth telling apart: the ORM alone (refitted), likelihood alone, both, and with
# who wrote the candidate (only meaningful where GLoRe's candidates are in the fit).
KINDS = ("kind_global", "kind_local")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "orm_logit (refitted)": ("orm_logit",),
    "lp_mean": ("lp_mean",),
    "orm_logit + lp_mean": ("orm_logit", "lp_mean"),
    "orm_logit + lp_mean + lp_min": ("orm_logit", "lp_mean", "lp_min"),
    "all five": ("orm_logit", "lp_mean", "lp_min", "lp_sum", "lp_low_share"),
    "writer + lp_mean": (*KINDS, "lp_mean"),
    "writer + lp_mean + lp_min": (*KINDS, "lp_mean", "lp_min"),
    "writer + orm_logit + lp_mean + lp_min": (*KINDS, "orm_logit", "lp_mean", "lp_min"),
    "writer + all five": (*KINDS, "orm_logit", "lp_mean", "lp_min", "lp_sum", "lp_low_share"),
}
# Which outcome-labelled solutions a variant learns from.
SAMPLE_SETS: dict[str, tuple[str, ...]] = {
    "policy drafts + extra drafts": ("draft", "extra"),
    "+ V* continuations": ("draft", "extra", "continuation"),
    "+ GLoRe candidates": ("draft", "extra", "continuation", "candidate"),
    "GLoRe candidates only": ("candidate",),
}


def _run_config(run: Path) -> RunConfig:
    return load_config(recipe=run / "recipe.yaml")


def _rows_to_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "problem_id": r.problem_id,
            "correct": r.correct,
            "source": r.source,
            "features": r.features,
        }
        for r in rows
    ]


def training_rows(run: Path, cache: Path) -> list[Row]:
    """Every training row the reranker stage fits on, with its features (cached: reading them
    and generating GLoRe's candidates costs minutes)."""
    if cache.exists():
        return load_rows(cache)
    cfg = _run_config(run)
    rollouts = read_rollouts(run / "rollouts")
    extra_path = run / "data" / "orm_extra.jsonl"
    extra = []
    if extra_path.exists():
        extra = [DraftRollout.from_dict(d) for d in read_jsonl(extra_path)]
    samples = collect_samples(rollouts, extra, continuations=True, max_steps=cfg.rollouts.max_steps)
    splits = {s: load_problems(run / "data" / f"{s}.jsonl") for s in ("train", "val", "test")}
    questions = {p.id: p.question for ps in splits.values() for p in ps}
    readings = read_features(
        samples,
        questions,
        run / "policy",
        run / "orm",
        backend=cfg.reranker.backend,
        max_batch_size=cfg.reranker.max_batch_size,
    )
    rows = sample_rows(samples, readings)
    used = {r.problem_id for r in (*rollouts, *extra)}
    seed = stage_seed(cfg.seed, SPEC.name)
    fresh = candidate_questions(splits["train"], used, cfg.reranker.candidate_questions, seed)
    rows += candidate_rows(run, fresh, backend=cfg.reranker.backend)
    save_rows(cache, rows)
    return rows


def ablate(run: Path, dev: Path, *, l2: float | None = None) -> dict[str, Any]:
    records = [QuestionRecord.from_dict(d) for d in read_jsonl(dev / "records.jsonl")]
    if not any(r.ranked for r in records):
        raise ValueError(f"{dev}/records.jsonl keeps no candidate features: rerun glore eval")
    cfg = _run_config(run)
    penalty = cfg.reranker.l2 if l2 is None else l2
    rows = training_rows(run, run / ROWS_CACHE)
    # The questions the reranker stage fits on (it holds out the rest to measure), so a variant
    # here with a stage variant's features is that variant.
    seed = stage_seed(cfg.seed, SPEC.name)
    fit_idx, _ = split_questions(rows, cfg.reranker.holdout_share, seed)
    rows = [rows[i] for i in fit_idx]
    out: list[dict[str, Any]] = []

    def row(label: str, data: str, reranker: Reranker, seconds: float | None) -> None:
        out.append(
            {
                "variant": label,
                "samples": data,
                "features": list(reranker.features),
                "weights": [round(w, 4) for w in reranker.weights],
                "fit_seconds": None if seconds is None else round(seconds, 2),
                **{m: measure(reranker, records, m) for m in RANKED_METHODS},
            }
        )

    for name, reranker in BUILTIN.items():
        row(name, "built in (no fit)", reranker, None)
    for data, sources in SAMPLE_SETS.items():
        chosen = [r for r in rows if r.source in sources]
        for label, features in FEATURE_SETS.items():
            if set(features) & set(KINDS) and "candidate" not in sources:
                continue  # every policy sample has the same writer: nothing to fit
            start = time.perf_counter()
            reranker = fit_reranker(chosen, label, features, l2=penalty)
            row(label, f"{data} ({len(chosen):,})", reranker, time.perf_counter() - start)
    return {
        "run": str(run),
        "dev": str(dev),
        "dev_questions": len(records),
        "l2": penalty,
        "rows": out,
    }


def to_markdown(result: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"# Reranker ablation on the dev split ({result['dev_questions']} questions)",
        "",
        f"Run {result['run']}; dev records {result['dev']}; L2 {result['l2']}. Pairwise: "
        "within-question (right, wrong) pairs ranked right (ties half; pairs in brackets). "
        "Accuracy: the share of questions whose pick is right.",
        "",
        "| variant | samples | GLoRe pairwise | GLoRe | best-of-3 pairwise | best-of-3 | fit s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        g, b = r["glore"], r["best_of_3"]
        lines.append(
            f"| {r['variant']} | {r['samples']} | {pct(g['pairwise'])} ({g['pairs']}) | "
            f"{pct(g['accuracy'])} | {pct(b['pairwise'])} ({b['pairs']}) | {pct(b['accuracy'])} | "
            f"{'–' if r['fit_seconds'] is None else r['fit_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.reranker_ablation",
        description="fit reranker variants on a run's samples, measure them on a dev evaluation",
    )
    ap.add_argument("--run", type=Path, required=True, help="trained run directory")
    ap.add_argument(
        "--dev", type=Path, required=True, help="a `glore eval --split dev` output folder"
    )
    ap.add_argument("--l2", type=float, default=None, help="L2 penalty (default: the recipe's)")
    args = ap.parse_args(argv)
    meta = json.loads((args.dev / "report.json").read_text()).get("meta", {})
    if meta.get("split") != "dev":
        raise SystemExit(f"--dev: {args.dev} is a {meta.get('split')!r} evaluation, not dev")
    result = ablate(args.run, args.dev, l2=args.l2)
    (args.dev / "rerankers.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.dev / "rerankers.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
