"""The `glore` command: serve, train, eval and bench.

Each subcommand registers its own arguments from the package that owns it, imported lazily so
`glore --help` stays fast and a base install works without the optional extras.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with `add_arguments(parser)` and `run(args) -> int`, help text)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.cli", "serve a trained run over HTTP (POST /solve)"),
    "train": ("training.cli", "train the five GLoRe checkpoints from synthetic or GSM8K data"),
    "eval": ("training.evaluation.cli", "evaluate a trained run and write the paper's tables"),
    "bench": ("bench.cli", "benchmarks: engines, service, load"),
    "export": ("training.export", "copy what serving needs from a run, with file hashes"),
}


def _not_yet(name: str) -> tuple[object, object]:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER)

    def run(args: argparse.Namespace) -> int:
        print(f"glore {name}: not yet implemented", file=sys.stderr)
        return 2

    return add_arguments, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glore",
        description="GLoRe: global and local refinements of LLM reasoning, served and trained.",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}", required=True
    )
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
            add_arguments, run = module.add_arguments, module.run
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            add_arguments, run = _not_yet(name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
