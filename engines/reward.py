"""Reading a reward model: which tokens it is fed, and the per-step scores read off its logits.

Reward models are `*ForTokenClassification` heads with 2 labels (1 = "correct"). A step's score is
softmax(logits)[1] at the STEP_TAG token that closes it (engines.text.reward_input), so one forward
pass scores every step of a solution and the outcome is the reading at the last tag. We chose this
over a causal LM read through label-token logprobs because transformers trains it with a plain
token-classification loss and vLLM serves the same checkpoint unchanged through its pooling runner
(`token_classify`), which works on CPU, where vLLM refuses `prompt_logprob_token_ids`. Both
backends read scores with these functions, so their readings agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engines.base import EngineLoadError, InputError, ScoreRequest, StepScores
from engines.text import STEP_TAG, reward_input


def step_tag_id(tokenizer: Any, path: str) -> int:
    """The id of STEP_TAG, which must be one token in a reward model's tokenizer."""
    ids = tokenizer.encode(STEP_TAG, add_special_tokens=False)
    if len(ids) != 1:
        raise EngineLoadError(f"tokenizer does not have {STEP_TAG!r} as one token", path=path)
    return int(ids[0])


def check_reward_config(path: str) -> None:
    """Refuse a checkpoint that is not a 2-label token-classification reward model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith("ForTokenClassification") for a in archs):
        raise EngineLoadError(
            f"a reward model needs a token-classification head, the checkpoint is {archs}",
            path=path,
        )
    if getattr(config, "num_labels", None) != 2:
        raise EngineLoadError(
            "a reward model needs 2 labels (1 = correct), "
            f"config has num_labels={getattr(config, 'num_labels', None)}",
            path=path,
        )


def reward_token_ids(tokenizer: Any, tag_id: int, request: ScoreRequest) -> list[int]:
    """Token ids of a request's reward input; both backends score exactly these ids."""
    if not request.steps:
        raise InputError("steps: a solution to score needs at least one step")
    ids = tokenizer.encode(reward_input(request.question, request.steps), add_special_tokens=False)
    found = sum(1 for i in ids if i == tag_id)
    if found != len(request.steps):
        # A step containing the literal tag would shift every reading after it.
        raise InputError(
            f"steps: expected {len(request.steps)} step tags, found {found} "
            f"(a step may not contain {STEP_TAG!r})"
        )
    return list(ids)


def step_probs(logits: Any, ids: Sequence[int], tag_id: int) -> StepScores:
    """softmax(logits)[1] at every step-tag position; logits is [len(ids), 2]."""
    import torch

    positions = [i for i, t in enumerate(ids) if t == tag_id]
    probs = torch.softmax(logits[positions].float(), dim=-1)[:, 1]
    return StepScores(tuple(float(p) for p in probs))


def step_probs_from_rows(
    rows: Sequence[Sequence[float]], ids: Sequence[int], tag_id: int
) -> StepScores:
    """step_probs for logits as plain rows (a server's JSON), without torch: softmax over two
    labels is the logistic of their difference, computed in double precision."""
    import math

    probs = []
    for i, t in enumerate(ids):
        if t == tag_id:
            no, yes = float(rows[i][0]), float(rows[i][1])
            probs.append(1.0 / (1.0 + math.exp(no - yes)))
    return StepScores(tuple(probs))
