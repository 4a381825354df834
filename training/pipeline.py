"""The training pipeline: data -> policy -> rollouts -> ORM -> SORM -> refiners -> reranker ->
profile, into one run directory.

`STAGES` is the one declaration of the graph (each stage's spec lives in its module under
training.stages); the runner, its resume logic and the manifest's summary are training.graph's,
bound here to it. Every stage reads its inputs from the run directory and writes its outputs
there, so each one runs alone, a rerun skips finished stages, and `manifest.json` records what
happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training import graph, stages
from training.config import RunConfig
from training.graph import Manifest, Run, StageSpec, stage_seed

__all__ = ["GRAPH", "STAGES", "Manifest", "Run", "StageSpec", "run_stages", "stage_seed"]

STAGES: tuple[StageSpec, ...] = stages.load()
GRAPH = graph.Graph(STAGES)


def run_stages(
    cfg: RunConfig,
    out: Path,
    names: Sequence[str],
    *,
    force: bool = False,
    specs: Sequence[StageSpec] = STAGES,
) -> Manifest:
    """Run the named stages in order (the data stage first when missing), skipping finished
    ones; `specs` is the graph (STAGES, or a test's with a stage of its own)."""
    return graph.run_graph(graph.Graph(specs), cfg, out, names, force=force)
