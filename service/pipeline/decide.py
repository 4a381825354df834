"""Stage 3 (pure): keep the draft, or refine it, and where the local critique goes."""

from __future__ import annotations

from engines.base import StepScores
from service.pipeline.types import Action, PipelineConfig, Plan, Reason, RefineMode, Scored


def first_flagged_step(sorm: StepScores | None, threshold: float) -> int | None:
    """The first step whose SORM score is below `threshold`, or None."""
    if sorm is None:
        return None
    return next((i for i, p in enumerate(sorm.step_probs) if p < threshold), None)


def local_target(sorm: StepScores | None, threshold: float) -> int | None:
    """Where the critique marker goes: the first flagged step; when the SORM flags none, the
    step it trusts least (earliest on ties), since the ORM's doubt must sit somewhere."""
    if sorm is None or not sorm.step_probs:
        return None
    flagged = first_flagged_step(sorm, threshold)
    if flagged is not None:
        return flagged
    probs = sorm.step_probs
    return min(range(len(probs)), key=lambda i: (probs[i], i))


def decide(draft: Scored, cfg: PipelineConfig) -> Plan:
    """ORM-gated refinement, as in the paper: refine when the draft's outcome score is below
    `cfg.orm_threshold` (or always, with `refine=always`)."""
    flagged = first_flagged_step(draft.sorm, cfg.sorm_threshold)
    target = local_target(draft.sorm, cfg.sorm_threshold)
    if not draft.candidate.steps:
        return Plan(Action.REFINE, Reason.EMPTY_DRAFT)
    if cfg.refine is RefineMode.ALWAYS:
        return Plan(Action.REFINE, Reason.REFINE_ALWAYS, flagged, target)
    if draft.orm_score >= cfg.orm_threshold:
        return Plan(Action.KEEP, Reason.ORM_ABOVE_THRESHOLD, flagged, None)
    return Plan(Action.REFINE, Reason.ORM_BELOW_THRESHOLD, flagged, target)
