"""`glore serve --run DIR --host H --port N`: serve a trained run directory over HTTP.

Only stdlib at the top: uvicorn, FastAPI and torch load inside `run()`, so `glore --help` is fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

_ROLES = ("policy", "orm", "sorm", "refine_global", "refine_local")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run directory with one checkpoint folder per role (default: $GLORE_RUN_DIR)",
    )
    parser.add_argument("--host", default=None, help="address to bind (default: $GLORE_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GLORE_PORT)")
    parser.add_argument(
        "--train-if-missing",
        metavar="PRESET",
        default=None,
        help="train the run with `glore train all --preset PRESET` first when its "
        "checkpoints are missing (e.g. tiny)",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, ... (default: INFO)")
    parser.add_argument(
        "--allow-stale-text-contract",
        action="store_true",
        help="serve a run trained under another text contract (prompt format) than this "
        "code's; refused by default, since its models would answer badly without an error",
    )
    parser.epilog = (
        "Every other setting comes from GLORE_* environment variables (see service/settings.py), "
        "e.g. GLORE_API_KEYS, GLORE_LIMITS__MAX_IN_FLIGHT, GLORE_POLICY__BACKEND=vllm."
    )


def missing_roles(run_dir: Path) -> list[str]:
    """Roles whose checkpoint folder (a config.json, or a LoRA adapter's adapter_config.json)
    is absent from `run_dir`."""
    return [
        role
        for role in _ROLES
        if not any((run_dir / role / f).is_file() for f in ("config.json", "adapter_config.json"))
    ]


def train(run_dir: Path, preset: str) -> int:
    """Train the run in a child process (its own progress bars and logs go to the terminal)."""
    command = [
        sys.executable,
        "-m",
        "glore",
        "train",
        "all",
        "--preset",
        preset,
        "--out",
        str(run_dir),
    ]
    print(
        f"[glore serve] {run_dir} has no trained checkpoints: training the {preset!r} preset "
        f"first ({' '.join(command[2:])}); this happens once",
        file=sys.stderr,
        flush=True,
    )
    start = time.monotonic()
    code = subprocess.call(command)
    print(
        f"[glore serve] training {'finished' if code == 0 else 'failed'} "
        f"in {time.monotonic() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return code


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from engines.contract import check_text_contract
    from service.settings import Settings, check_env, read_serving_defaults

    overrides: dict[str, object] = {}
    if args.run is not None:
        overrides["run_dir"] = args.run
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    try:
        check_env()
    except ValueError as exc:
        print(f"glore serve: {exc}", file=sys.stderr)
        return 2
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        print(f"glore serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2

    run_dir = settings.run_dir
    if (
        run_dir is not None
        and args.train_if_missing
        and missing_roles(run_dir)
        and train(run_dir, args.train_if_missing) != 0
    ):
        return 1
    try:
        specs = settings.engine_specs()
        if run_dir is not None:
            read_serving_defaults(run_dir)  # a broken serving.json fails here, not at startup
        runs = [run_dir] if run_dir is not None else []
        runs += [Path(spec.path).parent for spec in specs.values()]
        for warning in check_text_contract(runs, allow_stale=args.allow_stale_text_contract):
            print(f"glore serve: warning: {warning}", file=sys.stderr)
    except ValueError as exc:
        print(f"glore serve: {exc}", file=sys.stderr)
        return 2
    # Fail now, not after startup, when a checkpoint folder is missing.
    missing = {
        role.value: spec.path for role, spec in specs.items() if not Path(spec.path).is_dir()
    }
    if missing:
        where = ", ".join(f"{role} ({path})" for role, path in missing.items())
        print(
            f"glore serve: no checkpoint for {where}; train a run with "
            f"`glore train all --preset tiny --out DIR`, or pass --train-if-missing tiny",
            file=sys.stderr,
        )
        return 2

    import uvicorn

    from glore.app import create_app

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # create_app routes uvicorn's logs through ours (JSON)
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 1,
        workers=1,
    )
    print(
        f"[glore serve] http://{settings.host}:{settings.port} (the page at /ui, API docs at "
        "/docs); models load in "
        "the background and /ready answers 200 once they have",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(config).run()
    return 0
