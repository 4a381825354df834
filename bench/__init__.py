"""Benchmarks that write JSON and markdown reports under reports/ (`glore bench ...`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def measured(
    name: str, bench: Callable[[argparse.Namespace], dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any] | None:
    """`bench(args)`'s report; None when it could not run, after saying why on stderr."""
    try:
        return bench(args)
    except (FileNotFoundError, RuntimeError, TimeoutError, ValueError) as exc:
        print(f"glore bench {name}: {exc}", file=sys.stderr)
        return None


def write_report(out: Path, name: str, report: dict[str, Any], markdown: str) -> list[Path]:
    """reports/bench-NAME.json and .md under `out` (made if missing); the paths written."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"bench-{name}.json", out / f"bench-{name}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown)
    return paths


def say_wrote(paths: Iterable[Path]) -> None:
    print("wrote " + ", ".join(str(p) for p in paths))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
