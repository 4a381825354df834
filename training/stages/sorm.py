"""The stepwise ORM: trained on V* labels of the rollouts' step prefixes (a prefix is positive
when one of its continuations reaches the right answer)."""

from __future__ import annotations

import logging
from typing import Any

from engines.base import Role
from training.graph import Report, Run, checkpoint_hash
from training.stages import _reward
from training.vstar import sorm_examples

log = logging.getLogger(__name__)


def stage_sorm(run: Run, seed: int) -> Report:
    cfg = run.cfg.sorm
    run.require(Role.POLICY)
    rollouts = _reward.rollouts(run)
    kw: dict[str, Any] = {"seed": seed, "soft": cfg.soft_labels, "propagate": cfg.propagate}
    rows = sorm_examples(rollouts, balance=cfg.balance, consistency=cfg.consistency_check, **kw)
    balanced = cfg.balance
    if not rows and cfg.balance:
        # Every step index has one class only (a policy that never succeeds: a weak base
        # model, or GSM8K at a few steps): balancing keeps nothing, so train unbalanced
        # rather than stop after the rollouts, and say so in the manifest.
        log.warning("sorm: V* labels have one class at every step; training unbalanced")
        rows = sorm_examples(rollouts, balance=False, consistency=cfg.consistency_check, **kw)
        balanced = False
    fitted = _reward.fit(run, Role.SORM, cfg, rows, seed)
    return {
        "counts": fitted.counts(len(rows), extra_drafts=0, balanced=balanced),
        "metrics": {"heldout": fitted.evaluation, "final_loss": fitted.final_loss},
        "hashes": {str(Role.SORM): checkpoint_hash(fitted.path)},
    }


SPEC = _reward.spec(Role.SORM, stage_sorm)
