"""Reward models (ORM and SORM): a token classifier read at each step's STEP_TAG.

Both start from the policy's weights with a new 2-way head (1 = correct) and differ only in
their labels: the ORM learns final-answer correctness at every step, the SORM the V* labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from engines.base import Role, ScoreRequest
from training import generation
from training.config import RunConfig, TrainConfig
from training.data import RewardExample, collate_reward, reward_example, reward_loss
from training.metrics import accuracy_at, roc_auc
from training.modeling import with_lora
from training.tasks import Problem
from training.trainer import TrainResult, train
from training.vstar import DraftRollout, SormExample


def reward_examples(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[SormExample],
    problems: Mapping[str, Problem],
) -> list[RewardExample]:
    return [
        reward_example(tokenizer, problems[r.problem_id].question, r.steps, r.labels) for r in rows
    ]


def _loss(model: Any, batch: dict[str, Any]) -> Any:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return reward_loss(logits, batch["targets"])


def fit_reward(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[RewardExample],
    cfg: TrainConfig,
    run: RunConfig,
    *,
    seed: int,
    desc: str,
) -> tuple[Any, TrainResult]:
    """Train a token classifier with the loss at labelled step tags only."""
    model = with_lora(model, run.model, classifier=True)
    return train(
        model,
        examples,
        collate_reward,
        cfg,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        desc=desc,
        loss_fn=_loss,
    )


def evaluate_scorer(
    role: Role,
    path: str,
    drafts: Sequence[DraftRollout],
    problems: Mapping[str, Problem],
    run: RunConfig,
) -> dict[str, float | int | None]:
    """Score held-out drafts through the engines layer and measure separation.

    outcome_auc: final-step score vs final-answer correctness (the ORM's target).
    step_auc: every step's score vs the exact prefix check (the SORM's target, measured exactly
    on synthetic data where the paper could only estimate it).
    """
    spec = generation.engine_spec(path, run.rollouts.backend, run.rollouts.max_batch_size)
    scorer = generation.load_scorer(role, spec)
    try:
        requests = [ScoreRequest(problems[d.problem_id].question, d.steps) for d in drafts]
        scores = generation.score(scorer, requests, desc=f"{role} eval")
    finally:
        generation.close(scorer)
    final = [s.outcome_prob for s in scores]
    correct = [d.correct for d in drafts]
    step_scores = [p for s in scores for p in s.step_probs]
    step_labels = [ok for d in drafts for ok in d.prefix_ok]
    return {
        "heldout_drafts": len(drafts),
        "heldout_correct_fraction": sum(correct) / len(correct) if correct else None,
        "outcome_auc": roc_auc(final, correct),
        "outcome_accuracy": accuracy_at(final, correct),
        "step_auc": roc_auc(step_scores, step_labels),
        "step_accuracy": accuracy_at(step_scores, step_labels),
    }
