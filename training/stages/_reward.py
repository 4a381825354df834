"""What the ORM and SORM stages share: reading the rollouts, and fitting, saving and evaluating a
reward model on labelled drafts. Each stage builds its own labels (training.vstar)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from engines.base import Role
from training.config import OrmConfig, SormConfig
from training.graph import Report, Run, StageSpec, dig
from training.modeling import load_reward_model
from training.reward import evaluate_scorer, fit_reward, reward_examples
from training.rollouts import read_heldout, read_rollouts
from training.vstar import DraftRollout, SormExample


def rollouts(run: Run) -> list[DraftRollout]:
    rows = read_rollouts(run.rollouts_dir)
    if not rows:
        raise FileNotFoundError(f"{run.rollouts_dir} has no rollouts: run `glore train rollouts`")
    return rows


@dataclass
class Fitted:
    path: Path
    evaluation: dict[str, Any]
    final_loss: float | None
    labelled: list[float]
    """Every labelled step's target, for the report's counts."""

    def counts(self, rows: int, **more: Any) -> dict[str, Any]:
        return {
            "train_drafts": rows,
            **more,
            "labelled_steps": len(self.labelled),
            "positive_fraction": sum(v >= 0.5 for v in self.labelled) / len(self.labelled)
            if self.labelled
            else None,
        }


def fit(
    run: Run, role: Role, cfg: OrmConfig | SormConfig, rows: list[SormExample], seed: int
) -> Fitted:
    """Train `role` on `rows` (from the policy or model.base, per `init`), save it and
    evaluate it on the held-out drafts."""
    policy = run.require(Role.POLICY)
    problems = run.problems_by_id()
    tok = run.tokenizer()
    examples = reward_examples(tok, rows, problems)
    labelled = [v for r in rows for v in r.labels if v is not None]
    start = policy if cfg.init == "policy" else run.base_model()
    model = load_reward_model(start, run.cfg.model, seed)
    model, result = fit_reward(model, tok, examples, cfg, run.cfg, seed=seed, desc=f"{role}")
    path = run.save_model(model, role, {"train": result.to_dict()})
    evaluation: dict[str, Any] = {}
    if run.acc.is_main_process:
        heldout = read_heldout(run.rollouts_dir)
        evaluation = evaluate_scorer(role, str(path), heldout, problems, run.cfg)
        run.update_metrics(role, {"heldout": evaluation})
    return Fitted(path, evaluation, result.final_loss, labelled)


def summary(role: Role, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{role}_outcome_auc": dig(entry, "metrics", "heldout", "outcome_auc"),
        f"{role}_step_auc": dig(entry, "metrics", "heldout", "step_auc"),
    }


def spec(role: Role, run: Callable[[Run, int], Report]) -> StageSpec:
    """The stage that fits `role`'s reward model on the rollouts: its config section is the
    role's, and so is its name."""
    return StageSpec(
        name=role.value,
        sections=(role.value,),
        upstream=("rollouts",),
        outputs=(role,),
        run=run,
        summary=partial(summary, role),
    )
