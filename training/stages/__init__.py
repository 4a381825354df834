"""The training graph's stages, one module each, in run order.

Each module here declares its stage as `SPEC` (a training.graph.StageSpec: the config sections
and upstream stages it depends on, the outputs that say it is done, its run and summary
functions). A new stage is one module with a SPEC and its name in `NAMES`. The first is the root
(the run's data and tokenizer), which every run starts with and the command line does not name.

`NAMES` is plain text so that `glore train --help` reads the stage names without importing a
stage (and so torch); `load()` imports the modules and gives their specs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.graph import StageSpec

NAMES = ("data", "policy", "rollouts", "orm", "sorm", "refiners", "reranker", "profile")


def load() -> tuple[StageSpec, ...]:
    """Every stage's spec, in `NAMES` order (each module's SPEC carries its module's name)."""
    specs = []
    for name in NAMES:
        spec: StageSpec = importlib.import_module(f"{__name__}.{name}").SPEC
        if spec.name != name:
            raise ValueError(f"training.stages.{name} declares a stage named {spec.name!r}")
        specs.append(spec)
    return tuple(specs)
