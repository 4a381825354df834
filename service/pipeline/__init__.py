"""The GLoRe pipeline: stages (draft, score, decide, refine, rerank) and the strategies built on
them. No HTTP, no globals: the evaluation calls `solve` offline with an EngineSet."""

from service.pipeline.decide import decide, first_flagged_step, local_target
from service.pipeline.strategies import REQUIRED_ROLES, STRATEGIES, Strategy, get_strategy, solve
from service.pipeline.types import (
    Action,
    Candidate,
    CandidateKind,
    Dropped,
    Engines,
    LocalWhenUnflagged,
    PipelineConfig,
    Plan,
    Reason,
    RefineMode,
    Scored,
    ServedEngines,
    Solution,
    Stage,
    StrategyName,
)

__all__ = [
    "REQUIRED_ROLES",
    "STRATEGIES",
    "Action",
    "Candidate",
    "CandidateKind",
    "Dropped",
    "Engines",
    "LocalWhenUnflagged",
    "PipelineConfig",
    "Plan",
    "Reason",
    "RefineMode",
    "Scored",
    "ServedEngines",
    "Solution",
    "Stage",
    "Strategy",
    "StrategyName",
    "decide",
    "first_flagged_step",
    "get_strategy",
    "local_target",
    "solve",
]
