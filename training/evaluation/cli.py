"""`glore eval --run runs/NAME --out reports/NAME [--split dev]`: the paper's tables for a run.

Make every choice on `--split dev`; evaluate `--split test` (the default) once, at the end: the
run counts its test evaluations, and a test evaluation sets the thresholds `glore serve` uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines.backends import backend_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="trained run directory")
    parser.add_argument("--out", required=True, type=Path, help="where the report is written")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="GSM8K-format JSONL to evaluate on instead of the run's held-out test split",
    )
    parser.add_argument(
        "--split",
        choices=("test", "dev"),
        default="test",
        help="test (default): the held-out test split, counted in RUN/evaluations.json and "
        "writing RUN/serving.json; dev: a synthetic stream disjoint from train, validation and "
        "test, for every choice made before the one test evaluation",
    )
    parser.add_argument(
        "--n", type=int, default=1000, help="questions of the split to evaluate (default 1000)"
    )
    parser.add_argument(
        "--n-val", type=int, default=200, help="validation questions for thresholds"
    )
    parser.add_argument(
        "--n-heldout",
        type=int,
        default=None,
        help="questions per held-out part of the task generator (names and objects; "
        "phrasings) for the generalisation section; default --n, 0 skips it",
    )
    parser.add_argument("--k", type=int, default=8, help="continuations per step for V* labels")
    parser.add_argument(
        "--no-vstar", action="store_true", help="skip the V* rollouts (exact labels only)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=backend_names(), default="hf")
    parser.add_argument("--concurrency", type=int, default=32, help="questions in flight")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument(
        "--allow-stale-text-contract",
        action="store_true",
        help="evaluate a run trained under another text contract (prompt format) than this code's",
    )


def run(args: argparse.Namespace) -> int:
    from engines.contract import StaleTextContract, check_text_contract
    from training.evaluation.evaluate import EvalOptions, Split, run_evaluation

    try:
        for warning in check_text_contract([args.run], allow_stale=args.allow_stale_text_contract):
            print(f"glore eval: warning: {warning}", file=sys.stderr)
    except StaleTextContract as exc:
        print(f"glore eval: {exc}", file=sys.stderr)
        return 2

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
        split=Split(args.split),
        n_heldout=args.n_heldout,
    )
    paths = run_evaluation(options)
    print(f"report: {paths['md']}")
    return 0
