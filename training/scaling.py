"""`glore scaling`: the policy alone at several sizes and seeds, measured on the dev split.

Each variant is a recipe plus overrides (`d192:model.hidden_size=192,model.intermediate_size=576`),
trained as the policy stage of its own run (`RUNS/<variant>-seed<N>`, resumable like any stage)
and read greedily on the dev split and on every held-out part of the task generator (the dev
half of each). The report (`OUT/scaling.{json,md,png}`) gives per variant: parameters, training
minutes and tokens/s, dev accuracy and held-out accuracy with 95% intervals, and, for a variant
run under several seeds, the spread across them. Finished measurements are kept in
`OUT/results.jsonl` and reused, so adding a variant or a seed costs only that run.

Only the policy is trained: this chooses the policy's size, tokenizer and schedule on dev, before
the downstream stages (and the one test evaluation) spend their time on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARTS = ("dev", "heldout_names", "made_up", "heldout_templates")
PART_LABELS = {
    "dev": "dev (in distribution)",
    "heldout_names": "held-out real names/objects",
    "made_up": "made-up names/objects",
    "heldout_templates": "held-out phrasings",
}


@dataclass(frozen=True)
class Variant:
    """A named recipe change: `name:key=value,key=value` (no overrides: the recipe as is)."""

    name: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, rest = text.partition(":")
        if not name or any(c in name for c in "/ ="):
            raise ValueError(f"--variant: {text!r} needs a plain name before ':'")
        overrides = tuple(o for o in rest.split(",") if o)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"--variant {name}: overrides are key=value, got {bad}")
        return cls(name, overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="the recipe every variant starts from")
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME:key=value,...",
        help="a variant to train and measure (repeat the option for more)",
    )
    parser.add_argument(
        "--seeds", default="0", help="comma-separated run seeds, e.g. 0,1,2 (each: a whole run)"
    )
    parser.add_argument(
        "--spread-seeds",
        default="",
        help="seeds to run for the --spread variant only (the others run --seeds)",
    )
    parser.add_argument("--spread", default=None, help="the variant measured over --spread-seeds")
    parser.add_argument("--runs", type=Path, default=Path("runs/scaling"), help="run directories")
    parser.add_argument("--out", type=Path, default=Path("reports/scaling"), help="the report")
    parser.add_argument("--n-dev", type=int, default=300, help="dev questions per part")
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument(
        "--only-report", action="store_true", help="write the report from kept results only"
    )


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        variants = [Variant.parse(v) for v in args.variant]
        seeds = _seeds(args.seeds)
        spread = _seeds(args.spread_seeds)
    except ValueError as exc:
        print(f"glore scaling: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = _load_results(args.out / "results.jsonl")
    if not args.only_report:
        for variant in variants:
            for seed in spread if variant.name == args.spread and spread else seeds:
                key = f"{variant.name}-seed{seed}"
                if key in results:
                    log.info("%s: measured earlier, kept", key)
                    continue
                row = measure(args, variant, seed)
                results[key] = row
                with (args.out / "results.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
    order = [v.name for v in variants]
    rows = [r for r in results.values() if r["variant"] in order]
    rows.sort(key=lambda r: (order.index(r["variant"]), r["seed"]))
    report = build_report(rows, preset=args.preset, n_dev=args.n_dev)
    (args.out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "scaling.md").write_text(markdown(report))
    plot(report, args.out / "scaling.png")
    print(f"[glore scaling] report at {args.out / 'scaling.md'}")
    return 0


def _load_results(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {f"{r['variant']}-seed{r['seed']}": r for r in rows}


def measure(args: argparse.Namespace, variant: Variant, seed: int) -> dict[str, Any]:
    """Train the variant's policy (or find it trained) and read it greedily on every part."""
    from engines.base import Role
    from training.config import load_config
    from training.evaluation.evaluate import Split, dev_problems, heldout_problems
    from training.pipeline import run_stages

    cfg = load_config(preset=args.preset, overrides=[*variant.overrides, f"seed={seed}"])
    out = args.runs / f"{variant.name}-seed{seed}"
    entry = _finished_policy(out, cfg)
    if entry is None:  # train it (or resume it); a finished run is only read, never rewritten
        entry = run_stages(cfg, out, ["policy"]).data["stages"]["policy"]
    policy = out / str(Role.POLICY)
    metrics = json.loads((policy / "metrics.json").read_text())
    parts: dict[str, list[bool]] = {"dev": greedy(policy, dev_problems(out, args.n_dev), args)}
    for part, problems in heldout_problems(out, args.n_dev, Split.DEV).items():
        if not isinstance(problems, str):
            parts[part] = greedy(policy, problems, args)
    return {
        "variant": variant.name,
        "overrides": list(variant.overrides),
        "seed": seed,
        "run": str(out),
        "parameters": metrics.get("parameters", {}).get("total"),
        "model": {k: getattr(cfg.model, k) for k in ("hidden_size", "num_layers", "vocab_size")},
        "steps": metrics.get("sft", {}).get("steps"),
        "policy_seconds": entry.get("seconds"),
        "train_seconds": metrics.get("sft", {}).get("seconds"),
        "tokens_per_second": metrics.get("sft", {}).get("tokens_per_second"),
        "final_loss": metrics.get("sft", {}).get("final_loss"),
        "correct": {k: [int(c) for c in v] for k, v in parts.items()},
    }


def _finished_policy(out: Path, cfg: Any) -> dict[str, Any] | None:
    """The policy stage's manifest entry when `out` finished it under these very inputs (the
    check that lets a rerun skip it), else None. Reading instead of rerunning lets a study
    include a run that another process is still extending (the shipped run's later stages):
    running the graph on it would rewrite its manifest."""
    from training.graph import Manifest, Run, finished
    from training.pipeline import GRAPH

    path = out / "manifest.json"
    if not path.is_file():
        return None
    manifest = Manifest.open(path, cfg)
    if not finished(GRAPH, Run(cfg, out), manifest, "policy"):
        return None
    return manifest.stage("policy")


def greedy(policy: Path, problems: Sequence[Any], args: argparse.Namespace) -> list[bool]:
    """Per question: is the policy's greedy answer right?"""
    from engines.base import Role, SamplingParams
    from engines.text import policy_prompt
    from training import generation
    from training.tasks import check_solution

    gen = generation.load_generator(Role.POLICY, generation.engine_spec(policy, "hf", 256))
    try:
        outs = generation.generate(
            gen,
            [policy_prompt(p.question) for p in problems],
            SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens),
            desc=f"greedy {policy.parent.name}",
        )
    finally:
        generation.close(gen)
    return [
        check_solution(p, c.text).answer_correct for p, (c, *_) in zip(problems, outs, strict=True)
    ]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of k successes in n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def build_report(rows: Sequence[dict[str, Any]], *, preset: str, n_dev: int) -> dict[str, Any]:
    """Per run its accuracies with intervals; per variant the mean and spread over seeds."""
    runs = []
    for r in rows:
        acc = {}
        for part, correct in r["correct"].items():
            k, n = sum(correct), len(correct)
            lo, hi = wilson(k, n)
            acc[part] = {"accuracy": k / n if n else None, "n": n, "ci95": [lo, hi]}
        runs.append({**{k: v for k, v in r.items() if k != "correct"}, "accuracy": acc})
    variants: dict[str, dict[str, Any]] = {}
    for r in runs:
        v = variants.setdefault(
            r["variant"], {"overrides": r["overrides"], "parameters": r["parameters"], "runs": []}
        )
        v["runs"].append(r)
    for v in variants.values():
        v["seeds"] = [r["seed"] for r in v["runs"]]
        v["accuracy"] = {}
        for part in PARTS:
            vals = [r["accuracy"][part]["accuracy"] for r in v["runs"] if part in r["accuracy"]]
            if vals:
                v["accuracy"][part] = {
                    "mean": statistics.fmean(vals),
                    "sd": statistics.stdev(vals) if len(vals) > 1 else None,
                    "min": min(vals),
                    "max": max(vals),
                }
        v["train_minutes"] = statistics.fmean(r["train_seconds"] / 60 for r in v["runs"])
        v["tokens_per_second"] = statistics.fmean(r["tokens_per_second"] for r in v["runs"])
    return {"preset": preset, "n_dev": n_dev, "runs": runs, "variants": variants}


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _cells(accuracy: dict[str, Any], cell: Callable[[dict[str, Any]], str]) -> list[str]:
    """One table cell per part, in PARTS order ("–" where the part was not measured)."""
    return ["–" if accuracy.get(p) is None else cell(accuracy[p]) for p in PARTS]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The policy at several sizes and seeds (dev split)",
        "",
        f"Recipe `{report['preset']}` plus each variant's overrides; the policy stage alone, "
        f"read greedily on {report['n_dev']} dev questions per part (`glore scaling`). "
        "Intervals are Wilson 95% over questions; training minutes are the policy's SFT loop.",
        "",
        "| run | parameters | steps | training min | tokens/s | "
        + " | ".join(PART_LABELS[p] for p in PARTS)
        + " |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---" for _ in PARTS) + " |",
    ]
    for r in report["runs"]:
        cells = _cells(
            r["accuracy"],
            lambda a: f"{_pct(a['accuracy'])} ({_pct(a['ci95'][0])}–{_pct(a['ci95'][1])})",
        )
        lines.append(
            f"| {r['variant']} seed {r['seed']} | {r['parameters']:,} | {r['steps']:,} | "
            f"{r['train_seconds'] / 60:.1f} | {r['tokens_per_second']:,.0f} | "
            + " | ".join(cells)
            + " |"
        )
    spread = {k: v for k, v in report["variants"].items() if len(v["runs"]) > 1}
    if spread:
        lines += [
            "",
            "## Spread over seeds",
            "",
            "| variant | seeds | " + " | ".join(PART_LABELS[p] for p in PARTS) + " |",
            "| --- | --- | " + " | ".join("---" for _ in PARTS) + " |",
        ]
        for name, v in spread.items():
            cells = _cells(
                v["accuracy"],
                lambda a: (
                    f"{_pct(a['mean'])} ± {_pct(a['sd'])} ({_pct(a['min'])}–{_pct(a['max'])})"
                ),
            )
            seeds = ", ".join(map(str, v["seeds"]))
            lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
        lines += ["", "(mean ± standard deviation over seeds, then the range)"]
    lines += ["", "![accuracy by size](scaling.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    variants = report["variants"]
    for part in PARTS:
        xs, ys, errs = [], [], []
        for v in variants.values():
            a = v["accuracy"].get(part)
            if a is None:
                continue
            xs.append(v["parameters"] / 1e6)
            ys.append(100 * a["mean"])
            errs.append(0 if a["sd"] is None else 100 * a["sd"])
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        left.errorbar(
            [xs[i] for i in order],
            [ys[i] for i in order],
            yerr=[errs[i] for i in order],
            marker="o",
            capsize=3,
            label=PART_LABELS[part],
        )
    left.set_xlabel("policy parameters (millions)")
    left.set_ylabel("greedy accuracy (%)")
    left.set_title("accuracy by size (error bars: sd over seeds)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for name, v in variants.items():
        a = v["accuracy"].get("dev")
        if a is not None:
            right.scatter(v["train_minutes"], 100 * a["mean"])
            right.annotate(name, (v["train_minutes"], 100 * a["mean"]), fontsize=8)
    right.set_xlabel("policy training minutes (1 CPU thread)")
    right.set_ylabel("dev greedy accuracy (%)")
    right.set_title("accuracy against training time")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
