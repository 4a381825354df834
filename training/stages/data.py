"""The root stage: fixed splits (synthetic or GSM8K) and the run's tokenizer, written once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engines.text import global_refine_prompt, local_refine_prompt, policy_prompt, reward_input
from training.config import DataConfig
from training.graph import Report, Run, StageSpec, dir_hash
from training.modeling import base_tokenizer
from training.tasks import (
    Problem,
    TaskConfig,
    load_gsm8k,
    load_gsm8k_hub,
    make_splits,
    save_problems,
    split_problems,
)


def stage_data(run: Run, seed: int) -> Report:
    # The splits follow the run's seed, not the stage's: they are the run's questions.
    cfg = run.cfg.data
    run.data_dir.mkdir(parents=True, exist_ok=True)
    if cfg.source == "synthetic":
        task = TaskConfig.from_dict(cfg.task)
        splits = make_splits(task, run.cfg.seed, cfg.n_train, cfg.n_val, cfg.n_test)
        train, val, test = list(splits.train), list(splits.val), list(splits.test)
    elif cfg.source == "gsm8k":
        full_train, full_test = _gsm8k_splits(cfg)
        rest = split_problems(full_train, run.cfg.seed, cfg.n_val, 0)
        train, val = list(rest.train), list(rest.val)
        if cfg.n_train:
            train = train[: cfg.n_train]
        test = full_test[: cfg.n_test or None]
    else:
        raise ValueError(f"data.source: unknown {cfg.source!r} (synthetic | gsm8k)")
    if run.acc.is_main_process:
        for name, problems in (("train", train), ("val", val), ("test", test)):
            save_problems(problems, run.data_dir / f"{name}.jsonl")
        corpus = _corpus(train)
        tok = base_tokenizer(run.cfg.model, corpus)
        tok.save_pretrained(str(run.tokenizer_dir))
    run.acc.wait_for_everyone()
    return {
        "counts": {"train": len(train), "val": len(val), "test": len(test)},
        "metrics": {"vocab_size": len(run.tokenizer())},
        "hashes": {
            "data": dir_hash(run.data_dir, "*.jsonl"),
            "tokenizer": dir_hash(run.tokenizer_dir),
        },
    }


def _gsm8k_splits(cfg: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """GSM8K's (train, test) problems from `data.gsm8k_dir` or, through `datasets`, `data.hub`."""
    if cfg.hub:
        return (
            load_gsm8k_hub(cfg.hub, "train", config=cfg.hub_config),
            load_gsm8k_hub(cfg.hub, "test", config=cfg.hub_config),
        )
    if not cfg.gsm8k_dir:
        raise ValueError("data.gsm8k_dir: required for data.source=gsm8k (or data.hub)")
    root = Path(cfg.gsm8k_dir)
    for name in ("train.jsonl", "test.jsonl"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"data.gsm8k_dir: no {name} under {root.resolve()}")
    return load_gsm8k(root / "train.jsonl"), load_gsm8k(root / "test.jsonl")


def _corpus(problems: Sequence[Any]) -> list[str]:
    """Text in every format the models see, so the BPE merges fit prompts and targets alike."""
    out = []
    for p in problems:
        out.append(policy_prompt(p.question) + p.solution)
    for p in problems[:200]:
        out.append(global_refine_prompt(p.question, p.solution) + p.solution)
        out.append(local_refine_prompt(p.question, p.solution, 0).prompt)
        out.append(reward_input(p.question, p.steps))
    return out


SPEC = StageSpec(
    name="data",
    sections=("seed", "data", "model"),  # model: the tokenizer's vocabulary
    upstream=(),
    outputs=("data/train.jsonl", "tokenizer"),
    run=stage_data,
)
