"""Whether a trained run speaks this code's text contract.

Training writes `engines.text.text_fingerprint()` into every stage of a run's manifest. A model
trained on prompts in one format and queried in another fails silently (it answers, but badly),
so serving and evaluation compare the run's fingerprint with their own and refuse a run trained
under another contract, unless told to go ahead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from engines.text import text_fingerprint

OVERRIDE_FLAG = "--allow-stale-text-contract"


class StaleTextContract(ValueError):
    """A run was trained under a text contract this code no longer renders."""


def run_fingerprints(run_dir: Path) -> dict[str, str | None]:
    """Each finished stage of the run and the text fingerprint it was trained under (None for a
    stage trained before fingerprints were written); empty when the run has no manifest."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return {}
    try:
        stages = json.loads(path.read_text()).get("stages", {})
    except (OSError, ValueError) as exc:
        raise StaleTextContract(f"{path}: unreadable manifest ({exc})") from None
    return {
        name: entry.get("text_fingerprint")
        for name, entry in stages.items()
        if isinstance(entry, dict) and entry.get("status") == "done"
    }


def check_text_contract(run_dirs: Iterable[Path], *, allow_stale: bool = False) -> list[str]:
    """Refuse runs whose stages were trained under another text contract.

    Returns warnings (stages with no fingerprint, or a stale contract let through by
    `allow_stale`); raises StaleTextContract with what to do otherwise.
    """
    current = text_fingerprint()
    warnings: list[str] = []
    for run_dir in dict.fromkeys(Path(d) for d in run_dirs):
        stages = run_fingerprints(run_dir)
        stale = {s: f for s, f in stages.items() if f is not None and f != current}
        unknown = sorted(s for s, f in stages.items() if f is None)
        if unknown:
            warnings.append(
                f"{run_dir}: stages {', '.join(unknown)} record no text fingerprint (trained "
                "before fingerprints were written); their prompts cannot be checked"
            )
        if not stale:
            continue
        trained = ", ".join(f"{s} ({f})" for s, f in sorted(stale.items()))
        message = (
            f"{run_dir} was trained under another text contract: {trained}; this code renders "
            f"prompts as {current} (engines/text.py changed since). Retrain the stale stages "
            f"with `glore train all --out {run_dir}` (it reads the run's own recipe.yaml; only "
            f"stale stages rerun), or pass {OVERRIDE_FLAG} to use it anyway"
        )
        if not allow_stale:
            raise StaleTextContract(message)
        warnings.append(message)
    return warnings
