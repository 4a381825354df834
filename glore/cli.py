"""The `glore` command: serve, train, eval and bench.

Each subcommand registers its own arguments from the package that owns it. Those modules import
only the standard library at their top (the heavy packages load inside `run()`), so
`glore --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any, cast

# subcommand -> (module with `add_arguments(parser)` and `run(args) -> int`, help text)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("glore.serve", "serve a trained run over HTTP (POST /solve)"),
    "train": ("training.cli", "train the five GLoRe checkpoints from synthetic or GSM8K data"),
    "eval": ("training.evaluation.cli", "evaluate a trained run and write the paper's tables"),
    "bench": ("bench.cli", "benchmarks: engines, service, load"),
    "export": ("training.export", "copy what serving needs from a run, with file hashes"),
    "scaling": (
        "training.scaling",
        "train the policy at several sizes and seeds and compare them on the dev split",
    ),
}


def _subcommand_parser(
    *, parser_class: type[argparse.ArgumentParser], **kwargs: Any
) -> argparse.ArgumentParser:
    """argparse's factory for subcommand parsers (`parser_class` of add_subparsers), which takes
    the class that `add_parser` names."""
    return parser_class(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glore",
        description="GLoRe: global and local refinements of LLM reasoning, served and trained.",
    )
    sub = parser.add_subparsers(
        dest="command",
        metavar="{" + ",".join(SUBCOMMANDS) + "}",
        required=True,
        parser_class=cast(type[argparse.ArgumentParser], _subcommand_parser),  # called like one
    )
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        # A subcommand whose parser needs more than argparse's (`glore train` takes overrides
        # after its options) names its parser class as PARSER_CLASS.
        parser_class = getattr(module, "PARSER_CLASS", argparse.ArgumentParser)
        p = sub.add_parser(name, help=help_text, description=help_text, parser_class=parser_class)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
