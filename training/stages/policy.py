"""The policy: supervised fine-tuning on the reference solutions, then expert-iteration rounds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from engines.base import Role
from training.data import SFTExample
from training.graph import Report, Run, StageSpec, checkpoint_hash, dig
from training.modeling import load_causal_lm, new_policy
from training.policy import (
    ei_train_config,
    expert_iteration_data,
    fit_sft,
    greedy_accuracy,
    policy_examples,
)


def stage_policy(run: Run, seed: int) -> Report:
    cfg = run.cfg
    tok = run.tokenizer()
    train = run.problems("train")
    model = new_policy(cfg.model, tok, seed)
    examples = policy_examples(tok, train)
    model, result = fit_sft(model, tok, examples, cfg.policy, cfg, seed=seed, desc="policy SFT")
    metrics: dict[str, Any] = {"sft": result.to_dict(), "parameters": _n_params(model)}
    path = run.save_model(model, Role.POLICY, metrics)
    counts: dict[str, Any] = {"train_examples": len(examples)}
    test = run.problems("test")[: cfg.policy.eval_questions]
    if run.acc.is_main_process:
        metrics["sft_eval"] = greedy_accuracy(str(path), test, cfg, cfg.policy.max_new_tokens)
    for r in range(cfg.expert_iteration.rounds):
        if run.acc.is_main_process:
            ei_examples, ei_counts = expert_iteration_data(
                str(path), tok, train[: cfg.expert_iteration.questions], cfg, seed=seed + 1 + r
            )
            _save_examples(run, f"ei-{r}", ei_examples, ei_counts)
        run.acc.wait_for_everyone()
        ei_examples, ei_counts = _load_examples(run, f"ei-{r}")
        model = load_causal_lm(path, cfg.model)
        mixed = examples + ei_examples  # keep the references: EI alone drifts on a tiny model
        model, result = fit_sft(
            model, tok, mixed, ei_train_config(cfg), cfg, seed=seed + 1 + r, desc=f"EI round {r}"
        )
        metrics[f"ei_round_{r}"] = {"train": result.to_dict(), **ei_counts}
        path = run.save_model(model, Role.POLICY, metrics)
        if run.acc.is_main_process:
            metrics[f"ei_round_{r}"]["eval"] = greedy_accuracy(
                str(path), test, cfg, cfg.policy.max_new_tokens
            )
        counts[f"ei_round_{r}_examples"] = len(ei_examples)
    final_eval = metrics.get(f"ei_round_{cfg.expert_iteration.rounds - 1}", {}).get(
        "eval", metrics.get("sft_eval")
    )
    metrics["test"] = final_eval
    run.update_metrics(Role.POLICY, metrics)
    return {
        "counts": counts,
        "metrics": {"test": final_eval, "sft_final_loss": result.final_loss},
        "hashes": {"policy": checkpoint_hash(path)},
    }


def _save_examples(
    run: Run, name: str, examples: Sequence[SFTExample], counts: dict[str, int]
) -> None:
    """Expert-iteration data, shared with the other processes through the run directory."""
    path = run.data_dir / f"{name}.json"
    rows = [[e.input_ids, e.labels] for e in examples]
    path.write_text(json.dumps({"counts": counts, "examples": rows}))


def _load_examples(run: Run, name: str) -> tuple[list[SFTExample], dict[str, int]]:
    data = json.loads((run.data_dir / f"{name}.json").read_text())
    return [SFTExample(input_ids=a, labels=b) for a, b in data["examples"]], data["counts"]


def _n_params(model: Any) -> dict[str, int]:
    """Parameters of the saved model (LoRA adapters are merged, so not counted) and trained."""
    named = list(model.named_parameters())
    return {
        "total": sum(p.numel() for n, p in named if "lora_" not in n),
        "trained": sum(p.numel() for _, p in named if p.requires_grad),
    }


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"policy_greedy_accuracy": dig(entry, "metrics", "test", "greedy_accuracy")}


SPEC = StageSpec(
    name="policy",
    sections=("policy", "expert_iteration"),
    upstream=("data",),
    outputs=(Role.POLICY,),
    run=stage_policy,
    summary=summary,
)
