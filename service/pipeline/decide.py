"""Stage 3 (pure): keep the draft, or refine it, and where the local critique goes."""

from __future__ import annotations

from engines.base import StepScores
from service.pipeline.types import (
    Action,
    LocalWhenUnflagged,
    PipelineConfig,
    Plan,
    Reason,
    RefineMode,
    Scored,
)


def first_flagged_step(sorm: StepScores | None, threshold: float) -> int | None:
    """The first step whose SORM score is below `threshold`, or None."""
    if sorm is None:
        return None
    return next((i for i, p in enumerate(sorm.step_probs) if p < threshold), None)


def local_target(
    sorm: StepScores | None,
    threshold: float,
    when_unflagged: LocalWhenUnflagged = LocalWhenUnflagged.SKIP,
) -> int | None:
    """Where the critique marker goes: the first flagged step. When the SORM flags none, the
    paper refines only globally (None); `lowest` instead marks the step the SORM trusts least
    (earliest on ties), on the view that the ORM's doubt must sit somewhere."""
    if sorm is None or not sorm.step_probs:
        return None
    flagged = first_flagged_step(sorm, threshold)
    if flagged is not None or when_unflagged is LocalWhenUnflagged.SKIP:
        return flagged
    probs = sorm.step_probs
    return min(range(len(probs)), key=lambda i: (probs[i], i))


def decide(draft: Scored, cfg: PipelineConfig) -> Plan:
    """ORM-gated refinement, as in the paper: refine when the draft's outcome score is below
    `cfg.orm_threshold` (or always, with `refine=always`). A refinement the SORM places no
    step for is global only, and the reason says so."""
    flagged = first_flagged_step(draft.sorm, cfg.sorm_threshold)
    target = local_target(draft.sorm, cfg.sorm_threshold, cfg.local_when_unflagged)
    if not draft.candidate.steps:
        return Plan(Action.REFINE, Reason.EMPTY_DRAFT)
    if cfg.refine is RefineMode.AUTO and draft.orm_score >= cfg.orm_threshold:
        return Plan(Action.KEEP, Reason.ORM_ABOVE_THRESHOLD, flagged, None)
    if draft.sorm is not None and target is None:
        return Plan(Action.REFINE, Reason.NO_STEP_FLAGGED, flagged, None)
    if cfg.refine is RefineMode.ALWAYS:
        return Plan(Action.REFINE, Reason.REFINE_ALWAYS, flagged, target)
    return Plan(Action.REFINE, Reason.ORM_BELOW_THRESHOLD, flagged, target)
