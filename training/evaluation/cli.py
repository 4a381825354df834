"""`glore eval --run runs/NAME --out reports/NAME`: the paper's tables for a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="trained run directory")
    parser.add_argument("--out", required=True, type=Path, help="where the report is written")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="GSM8K-format JSONL to evaluate on instead of the run's held-out test split",
    )
    parser.add_argument("--n", type=int, default=1000, help="test questions (default 1000)")
    parser.add_argument(
        "--n-val", type=int, default=200, help="validation questions for thresholds"
    )
    parser.add_argument("--k", type=int, default=8, help="continuations per step for V* labels")
    parser.add_argument(
        "--no-vstar", action="store_true", help="skip the V* rollouts (exact labels only)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--concurrency", type=int, default=32, help="questions in flight")
    parser.add_argument("--max-new-tokens", type=int, default=160)


def run(args: argparse.Namespace) -> int:
    from training.evaluation.evaluate import EvalOptions, run_evaluation

    options = EvalOptions(
        run=args.run,
        out=args.out,
        data=args.data,
        n_test=args.n,
        n_val=args.n_val,
        k=args.k,
        vstar=not args.no_vstar,
        seed=args.seed,
        backend=args.backend,
        concurrency=args.concurrency,
        max_new_tokens=args.max_new_tokens,
    )
    paths = run_evaluation(options)
    print(f"report: {paths['md']}")
    return 0
