"""Tokenised training examples and their batches: SFT (loss on the completion only) and reward
models (a label at each STEP_TAG, soft labels allowed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from engines.text import reward_input
from training.modeling import step_tag_id

IGNORE = -100


@dataclass(frozen=True)
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt: the loss is on the completion (and EOS) only


@dataclass(frozen=True)
class RewardExample:
    input_ids: list[int]
    targets: list[float]  # P(correct) at each STEP_TAG, NaN everywhere else (and on masked tags)


def sft_example(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str) -> SFTExample:
    """The prompt tokenised exactly as a generator tokenises it, then the completion and EOS.

    Tokenising the two parts separately (not the concatenated text) is what makes the training
    sequence match what the engine feeds the model at inference time; like the engines, no
    special tokens (BOS) are added.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return SFTExample(input_ids=p + c, labels=[IGNORE] * len(p) + c)


def reward_example(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    steps: Sequence[str],
    labels: Sequence[float | None],
) -> RewardExample:
    """`engines.text.reward_input` tokenised, with step i's label at the i-th STEP_TAG."""
    ids = tokenizer(reward_input(question, steps), add_special_tokens=False)["input_ids"]
    tag = step_tag_id(tokenizer)
    positions = [i for i, t in enumerate(ids) if t == tag]
    if len(positions) != len(steps):
        raise ValueError(f"expected {len(steps)} step tags, found {len(positions)}")
    targets = [math.nan] * len(ids)
    for pos, label in zip(positions, labels, strict=True):
        if label is not None:
            targets[pos] = float(label)
    return RewardExample(input_ids=ids, targets=targets)


def collate_sft(batch: Sequence[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; padding is masked out of attention and loss."""
    ids, mask, labels = _right_padded(
        [e.input_ids for e in batch], [e.labels for e in batch], pad_id, IGNORE, torch.long
    )
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_reward(batch: Sequence[RewardExample], pad_id: int) -> dict[str, torch.Tensor]:
    ids, mask, targets = _right_padded(
        [e.input_ids for e in batch], [e.targets for e in batch], pad_id, math.nan, None
    )
    return {"input_ids": ids, "attention_mask": mask, "targets": targets}


def _right_padded(
    ids: Sequence[Sequence[int]],
    values: Sequence[Sequence[float]],
    pad_id: int,
    fill: float,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids padded with `pad_id`, their attention mask, and one value per token (`fill`
    past the end, in `dtype`; None: torch's default float)."""
    n = max(len(row) for row in ids)
    id_t = torch.full((len(ids), n), pad_id, dtype=torch.long)
    value_t = torch.full((len(ids), n), fill, dtype=dtype)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, (row, vals) in enumerate(zip(ids, values, strict=True)):
        t = len(row)
        id_t[i, :t] = torch.tensor(row)
        value_t[i, :t] = torch.tensor(vals)
        mask[i, :t] = 1
    return id_t, mask, value_t


def reward_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against (soft) labels at the labelled step tags only.

    logits: (B, T, 2); targets: (B, T) with P(correct) at labelled tags and NaN elsewhere.
    With a hard label this is the usual cross-entropy; with a soft one, the expected one.
    """
    where = ~torch.isnan(targets)
    if not where.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP) happy on an all-masked batch
    logp = torch.log_softmax(logits[where].float(), dim=-1)  # (N, 2)
    y = targets[where]  # (N,)
    return -(y * logp[:, 1] + (1 - y) * logp[:, 0]).mean()
