"""`glore train all|policy|rollouts|orm|sorm|refiners|reranker|profile`: the pipeline, or one
stage (the names are training.stages.NAMES, less the data stage that every run starts with).

Only stdlib and the stage names at the top: torch and transformers load inside `run()`, so
`glore --help` is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.stages import NAMES

ROOT, *RUNNABLE = NAMES  # the root (data) runs first in every run; the others are named
CHOICES = ("all", *RUNNABLE)


class TrainParser(argparse.ArgumentParser):
    """Takes `key=value` overrides after the options too (`train all --out X seed=1`).

    argparse fills a `*` positional from the first run of positionals only (the stage), so
    overrides written after the options come back unrecognised; this collects them.
    """

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        late = [a for a in extras if "=" in a and not a.startswith("-")]
        if late:
            namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *late]
            extras = [a for a in extras if a not in late]
        return namespace, extras


PARSER_CLASS = TrainParser  # `glore` builds the train subcommand's parser with it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "stage",
        choices=CHOICES,
        help=f"all: {' -> '.join(RUNNABLE)}; or one stage (profile also runs alone on a "
        "finished run: `glore train profile --out RUN`)",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--preset",
        help="a recipe under training/recipes (smoke, tiny, tiny-narrow); default: the recipe of "
        "an existing --out run, else tiny",
    )
    src.add_argument("--recipe", type=Path, help="a YAML recipe file (e.g. example-gsm8k.yaml)")
    parser.add_argument(
        "--out", type=Path, help="run directory (default runs/<preset or recipe name>)"
    )
    parser.add_argument(
        "--force", action="store_true", help="rerun the named stage(s) even if finished"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="recipe overrides, e.g. policy.lr=3e-4 rollouts.k=4 seed=1",
    )


def run(args: argparse.Namespace) -> int:
    from training.config import ConfigError, load_config  # yaml: not needed for --help

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = args.recipe
    if recipe is None and args.preset is None and args.out and (args.out / "recipe.yaml").is_file():
        # An existing run goes on with its own recipe: `glore train profile --out RUN` adds a
        # stage to a finished run without retraining anything.
        recipe = args.out / "recipe.yaml"
    try:
        cfg = load_config(preset=args.preset, recipe=recipe, overrides=list(args.overrides))
    except ConfigError as exc:
        print(f"glore train: {exc}", file=sys.stderr)
        return 2
    name = args.preset or (recipe.stem if recipe else "tiny")
    out: Path = args.out or Path("runs") / name
    if cfg.name == "run":
        cfg.name = out.name

    from training.pipeline import run_stages

    stages = RUNNABLE if args.stage == "all" else [args.stage]
    try:
        manifest = run_stages(cfg, out, stages, force=args.force)
    except (FileNotFoundError, ValueError) as exc:
        print(f"glore train {args.stage}: {exc}", file=sys.stderr)
        return 1
    if manifest.data.get("processes", 1) == 1 or _is_main():
        print(f"[glore train] {args.stage}: finished; manifest at {manifest.path}")
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"
