"""Stage 1, the policy: SFT on reference solutions, then optional rounds of expert iteration.

Expert iteration (the paper's policy was RL-fine-tuned; this is the simplest stand-in) samples
solutions at temperature 1, keeps those the exact checker passes, and fine-tunes on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from engines.base import Role, SamplingParams
from engines.text import extract_answer, join_steps, policy_prompt, split_steps
from training import generation
from training.config import PolicyConfig, RunConfig, TrainConfig
from training.data import SFTExample, collate_sft, sft_example
from training.modeling import with_lora
from training.tasks import Problem, check_solution
from training.trainer import TrainResult, train

log = logging.getLogger(__name__)


def policy_examples(
    tokenizer: PreTrainedTokenizerBase, problems: Sequence[Problem]
) -> list[SFTExample]:
    """(policy prompt -> reference solution + EOS) for every problem."""
    return [sft_example(tokenizer, policy_prompt(p.question), p.solution) for p in problems]


def fit_sft(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[SFTExample],
    cfg: TrainConfig,
    run: RunConfig,
    *,
    seed: int,
    desc: str,
) -> tuple[Any, TrainResult]:
    """Causal-LM SFT with the loss on completion tokens only (LoRA when the recipe asks)."""
    model = with_lora(model, run.model, classifier=False)
    if run.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return train(
        model, examples, collate_sft, cfg, pad_id=tokenizer.pad_token_id, seed=seed, desc=desc
    )


def greedy_accuracy(
    policy_dir: str, problems: Sequence[Problem], run: RunConfig, max_new_tokens: int
) -> dict[str, float | int]:
    """Greedy accuracy of a policy checkpoint (final answer and exact all-steps-right)."""
    spec = generation.engine_spec(policy_dir, run.rollouts.backend, run.rollouts.max_batch_size)
    gen = generation.load_generator(Role.POLICY, spec)
    try:
        outs = generation.generate(
            gen,
            [policy_prompt(p.question) for p in problems],
            SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
            desc="policy greedy eval",
        )
    finally:
        generation.close(gen)
    answer_ok = exact_ok = 0
    for p, (c, *_) in zip(problems, outs, strict=True):
        check = check_solution(p, c.text)
        answer_ok += check.answer_correct
        exact_ok += check.fully_correct
    n = len(problems)
    return {
        "questions": n,
        "greedy_accuracy": answer_ok / n if n else 0.0,
        "greedy_exact_accuracy": exact_ok / n if n else 0.0,
    }


def expert_iteration_data(
    policy_dir: str,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    run: RunConfig,
    *,
    seed: int,
) -> tuple[list[SFTExample], dict[str, int]]:
    """Sample `samples` solutions per question; keep the distinct ones the checker passes."""
    ei = run.expert_iteration
    spec = generation.engine_spec(policy_dir, run.rollouts.backend, run.rollouts.max_batch_size)
    gen = generation.load_generator(Role.POLICY, spec)
    params = SamplingParams(
        n=ei.samples,
        temperature=ei.temperature,
        max_new_tokens=run.policy.max_new_tokens,
        seed=seed,
    )
    try:
        outs = generation.generate(
            gen, [policy_prompt(p.question) for p in problems], params, desc="expert iteration"
        )
    finally:
        generation.close(gen)
    examples: list[SFTExample] = []
    sampled = 0
    for p, comps in zip(problems, outs, strict=True):
        seen: set[str] = set()
        for c in comps:
            sampled += 1
            steps = split_steps(c.text)
            if not steps or extract_answer(c.text) is None:
                continue
            check = check_solution(p, steps)
            text = join_steps(steps)
            if check.fully_correct and text not in seen:
                seen.add(text)
                examples.append(sft_example(tokenizer, policy_prompt(p.question), text))
    return examples, {"sampled": sampled, "kept": len(examples)}


def ei_train_config(run: RunConfig) -> PolicyConfig:
    """The policy's training config with expert iteration's epochs and learning rate."""
    ei = run.expert_iteration
    base = run.policy
    return PolicyConfig(
        epochs=ei.epochs,
        batch_size=base.batch_size,
        grad_accum=base.grad_accum,
        lr=ei.lr,
        min_lr_ratio=base.min_lr_ratio,
        warmup_steps=min(base.warmup_steps, 10),
        weight_decay=base.weight_decay,
        grad_clip=base.grad_clip,
        max_length=base.max_length,
        log_every=base.log_every,
    )
