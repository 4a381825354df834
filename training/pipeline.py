"""The training pipeline: policy -> rollouts -> ORM -> SORM -> refiners -> reranker -> profile,
into one run directory.

Every stage reads its inputs from the run directory and writes its outputs there, so each one
runs alone, a rerun skips finished stages, and `manifest.json` records what happened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import yaml

from engines.base import Role
from engines.text import text_fingerprint
from training.config import RunConfig

log = logging.getLogger(__name__)


class Stage(StrEnum):
    DATA = "data"
    POLICY = "policy"
    ROLLOUTS = "rollouts"
    ORM = "orm"
    SORM = "sorm"
    REFINERS = "refiners"
    RERANKER = "reranker"
    PROFILE = "profile"


# Which config sections each stage's output depends on (its own and everything upstream).
INPUTS: dict[Stage, tuple[str, ...]] = {
    Stage.DATA: ("seed", "data", "model"),
    Stage.POLICY: ("seed", "data", "model", "policy", "expert_iteration"),
    Stage.ROLLOUTS: ("seed", "data", "model", "policy", "expert_iteration", "rollouts"),
    Stage.ORM: ("seed", "data", "model", "policy", "expert_iteration", "rollouts", "orm"),
    Stage.SORM: ("seed", "data", "model", "policy", "expert_iteration", "rollouts", "sorm"),
    Stage.REFINERS: (
        "seed", "data", "model", "policy", "expert_iteration", "rollouts", "orm", "refiners",
    ),
    Stage.RERANKER: (
        "seed", "data", "model", "policy", "expert_iteration", "rollouts", "orm", "reranker",
    ),
    Stage.PROFILE: ("seed", "data", "model", "policy", "expert_iteration", "profile"),
}  # fmt: skip
ALL_STAGES = (
    Stage.POLICY, Stage.ROLLOUTS, Stage.ORM, Stage.SORM, Stage.REFINERS, Stage.RERANKER,
    Stage.PROFILE,
)  # fmt: skip


def stage_seed(base: int, stage: str) -> int:
    """The seed of one stage: the run's seed plus an offset derived from the stage's name, so
    every stage draws from its own stream and adding or reordering stages moves no other's."""
    return base + int(hashlib.sha256(f"glore-stage:{stage}".encode()).hexdigest()[:6], 16)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def dir_hash(path: Path, pattern: str = "*") -> str:
    """A content hash of a folder's files (names and bytes), in name order."""
    h = hashlib.sha256()
    for p in sorted(path.glob(pattern)):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.name.encode())
            h.update(file_hash(p).encode())
    return h.hexdigest()[:16]


# What each stage reads from upstream stages: a new upstream output makes it stale.
UPSTREAM: dict[Stage, tuple[Stage, ...]] = {
    Stage.DATA: (),
    Stage.POLICY: (Stage.DATA,),
    Stage.ROLLOUTS: (Stage.POLICY,),
    Stage.ORM: (Stage.ROLLOUTS,),
    Stage.SORM: (Stage.ROLLOUTS,),
    Stage.REFINERS: (Stage.ROLLOUTS, Stage.ORM),  # the global refiner reads the ORM's drafts
    Stage.RERANKER: (Stage.POLICY, Stage.ROLLOUTS, Stage.ORM),
    Stage.PROFILE: (Stage.DATA, Stage.POLICY),
}


def _inputs_hash(cfg: RunConfig, manifest: Manifest, stage: Stage) -> str:
    """The stage's config sections plus the content hashes of the upstream outputs it reads."""
    d = cfg.to_dict()
    upstream = {str(u): manifest.stage(u).get("hashes") for u in UPSTREAM[stage]}
    blob = json.dumps(
        {
            "config": {n: d[n] for n in INPUTS[stage]},
            "upstream": upstream,
            "text_contract": text_fingerprint(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """`runs/NAME/manifest.json`: one entry per stage, rewritten atomically after each change."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, cfg: RunConfig) -> Manifest:
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("name", cfg.name)
        data.setdefault("created", _now())
        data.setdefault("stages", {})
        data["seed"] = cfg.seed
        return cls(path, data)

    def stage(self, stage: Stage) -> dict[str, Any]:
        return self.data["stages"].setdefault(str(stage), {"status": "pending"})

    def save(self) -> None:
        self.data["updated"] = _now()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


class Run:
    """A run directory and the things every stage needs from it (lazily loaded, cached)."""

    def __init__(self, cfg: RunConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self._splits: dict[str, list[Any]] = {}
        self._tokenizer: Any = None
        from training.trainer import accelerator

        self.acc = accelerator()

    # ---------------------------------------------------------------- paths

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def rollouts_dir(self) -> Path:
        return self.out / "rollouts"

    @property
    def tokenizer_dir(self) -> Path:
        return self.out / "tokenizer"

    def checkpoint(self, role: Role) -> Path:
        return self.out / str(role)

    def seed(self, stage: Stage) -> int:
        return stage_seed(self.cfg.seed, stage)

    # ---------------------------------------------------------------- inputs

    def problems(self, split: str) -> list[Any]:
        from training.tasks import load_problems

        if split not in self._splits:
            path = self.data_dir / f"{split}.jsonl"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run `glore train policy` first")
            self._splits[split] = load_problems(path)
        return self._splits[split]

    def problems_by_id(self) -> dict[str, Any]:
        return {p.id: p for split in ("train", "val", "test") for p in self.problems(split)}

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
        return self._tokenizer

    def require(self, role: Role) -> Path:
        from training.modeling import is_checkpoint

        path = self.checkpoint(role)
        if not is_checkpoint(path):
            raise FileNotFoundError(f"{path} is missing: run the stage that trains {role} first")
        return path

    # ---------------------------------------------------------------- outputs

    def save_model(
        self, model: Any, role: Role, metrics: dict[str, Any], *, adapter_of: Role | None = None
    ) -> Path:
        """The checkpoint, with the resolved recipe and its metrics beside it (main process).
        With `adapter_of`, only the LoRA adapter is saved, unmerged, over that role's folder."""
        from training.modeling import save_adapter, save_checkpoint

        path = self.checkpoint(role)
        if self.acc.is_main_process:
            if adapter_of is None:
                save_checkpoint(model, self.tokenizer(), path)
            else:
                save_adapter(model, self.tokenizer(), path, base=f"../{adapter_of}")
            (path / "recipe.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            (path / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        self.acc.wait_for_everyone()
        return path

    def update_metrics(self, role: Role, extra: dict[str, Any]) -> None:
        path = self.checkpoint(role) / "metrics.json"
        if self.acc.is_main_process:
            data = json.loads(path.read_text())
            data.update(extra)
            path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# -------------------------------------------------------------------- stages


def stage_data(run: Run) -> dict[str, Any]:
    """Fixed splits (synthetic or GSM8K) and the run's tokenizer, written once."""
    from training.modeling import base_tokenizer
    from training.tasks import TaskConfig, make_splits, save_problems, split_problems

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


def _gsm8k_splits(cfg: Any) -> tuple[list[Any], list[Any]]:
    """GSM8K's (train, test) problems from `data.gsm8k_dir` or, through `datasets`, `data.hub`."""
    from training.tasks import load_gsm8k, load_gsm8k_hub

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
    from engines.text import (
        global_refine_prompt,
        local_refine_prompt,
        policy_prompt,
        reward_input,
    )

    out = []
    for p in problems:
        out.append(policy_prompt(p.question) + p.solution)
    for p in problems[:200]:
        out.append(global_refine_prompt(p.question, p.solution) + p.solution)
        out.append(local_refine_prompt(p.question, p.solution, 0).prompt)
        out.append(reward_input(p.question, p.steps))
    return out


def stage_policy(run: Run) -> dict[str, Any]:
    from training.modeling import load_causal_lm, new_policy
    from training.policy import (
        ei_train_config,
        expert_iteration_data,
        fit_sft,
        greedy_accuracy,
        policy_examples,
    )

    cfg, seed = run.cfg, run.seed(Stage.POLICY)
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
        "hashes": {"policy": _ckpt_hash(path)},
    }


def _save_examples(run: Run, name: str, examples: Sequence[Any], counts: dict[str, int]) -> None:
    """Expert-iteration data, shared with the other processes through the run directory."""
    path = run.data_dir / f"{name}.json"
    rows = [[e.input_ids, e.labels] for e in examples]
    path.write_text(json.dumps({"counts": counts, "examples": rows}))


def _load_examples(run: Run, name: str) -> tuple[list[Any], dict[str, int]]:
    from training.data import SFTExample

    data = json.loads((run.data_dir / f"{name}.json").read_text())
    return [SFTExample(input_ids=a, labels=b) for a, b in data["examples"]], data["counts"]


def stage_rollouts(run: Run) -> dict[str, Any]:
    from training.rollouts import run_rollouts

    policy = run.require(Role.POLICY)
    stats: dict[str, Any] = {}
    if run.acc.is_main_process:
        stats = run_rollouts(
            policy,
            run.problems("train"),
            run.problems("test"),
            run.rollouts_dir,
            run.cfg,
            seed=run.seed(Stage.ROLLOUTS),
        )
    run.acc.wait_for_everyone()
    return {
        "counts": {k: stats.get(k) for k in ("questions", "drafts", "steps", "heldout_drafts")},
        "metrics": stats,
        "hashes": {"rollouts": dir_hash(run.rollouts_dir, "*.jsonl")},
    }


def _reward_stage(run: Run, role: Role, stage: Stage) -> dict[str, Any]:
    from training.modeling import load_reward_model
    from training.reward import evaluate_scorer, fit_reward, reward_examples
    from training.rollouts import read_heldout, read_rollouts
    from training.vstar import orm_examples, sorm_examples

    cfg = run.cfg.orm if role is Role.ORM else run.cfg.sorm
    seed = run.seed(stage)
    policy = run.require(Role.POLICY)
    rollouts = read_rollouts(run.rollouts_dir)
    if not rollouts:
        raise FileNotFoundError(f"{run.rollouts_dir} has no rollouts: run `glore train rollouts`")
    extra: list[Any] = []
    balanced = role is Role.SORM and cfg.balance
    if role is Role.ORM:
        extra = _orm_extra_drafts(run, policy, seed)
        rows = orm_examples([*rollouts, *extra])
    else:
        kw = {"seed": seed, "soft": cfg.soft_labels, "propagate": cfg.propagate}
        rows = sorm_examples(rollouts, balance=cfg.balance, consistency=cfg.consistency_check, **kw)
        if not rows and cfg.balance:
            # Every step index has one class only (a policy that never succeeds: a weak base
            # model, or GSM8K at a few steps): balancing keeps nothing, so train unbalanced
            # rather than stop after the rollouts, and say so in the manifest.
            log.warning("sorm: V* labels have one class at every step; training unbalanced")
            rows = sorm_examples(rollouts, balance=False, consistency=cfg.consistency_check, **kw)
            balanced = False
    problems = run.problems_by_id()
    tok = run.tokenizer()
    examples = reward_examples(tok, rows, problems)
    labelled = [v for r in rows for v in r.labels if v is not None]
    model = load_reward_model(policy if cfg.init == "policy" else _base(run), run.cfg.model, seed)
    model, result = fit_reward(model, tok, examples, cfg, run.cfg, seed=seed, desc=f"{role}")
    metrics: dict[str, Any] = {"train": result.to_dict()}
    path = run.save_model(model, role, metrics)
    evaluation: dict[str, Any] = {}
    if run.acc.is_main_process:
        heldout = read_heldout(run.rollouts_dir)
        evaluation = evaluate_scorer(role, str(path), heldout, problems, run.cfg)
        run.update_metrics(role, {"heldout": evaluation})
    return {
        "counts": {
            "train_drafts": len(rows),
            "extra_drafts": len(extra),
            **({"balanced": balanced} if role is Role.SORM else {}),
            "labelled_steps": len(labelled),
            "positive_fraction": sum(v >= 0.5 for v in labelled) / len(labelled)
            if labelled
            else None,
        },
        "metrics": {"heldout": evaluation, "final_loss": result.final_loss},
        "hashes": {
            str(role): _ckpt_hash(path),
            **({"orm_extra": file_hash(run.data_dir / "orm_extra.jsonl")} if extra else {}),
        },
    }


def _orm_extra_drafts(run: Run, policy: Path, seed: int) -> list[Any]:
    """Outcome-labelled drafts of training questions the V* rollouts did not use.

    The ORM needs no continuations, so its data is cheap to widen (the paper samples far more
    ORM drafts than SORM ones). Written to data/orm_extra.jsonl for the record.
    """
    from training import generation
    from training.rollouts import heldout_rows, shard_seed, write_jsonl_atomic

    cfg, rcfg = run.cfg.orm, run.cfg.rollouts
    path = run.data_dir / "orm_extra.jsonl"
    if cfg.extra_questions <= 0:
        return []
    if run.acc.is_main_process:
        start = rcfg.questions or 0
        questions = run.problems("train")[start : start + cfg.extra_questions]
        spec = generation.engine_spec(policy, rcfg.backend, rcfg.max_batch_size)
        gen = generation.load_generator(Role.POLICY, spec)
        try:
            rows = heldout_rows(
                gen,
                questions,
                rcfg,
                seed=shard_seed(seed, 0, "orm"),
                max_new_tokens=rcfg.max_new_tokens,
                drafts_per_question=cfg.extra_drafts,
            )
        finally:
            generation.close(gen)
        write_jsonl_atomic(path, (r.to_dict() for r in rows))
    run.acc.wait_for_everyone()
    return _read_orm_extra(run)


def _read_orm_extra(run: Run) -> list[Any]:
    """The ORM stage's outcome-labelled extra drafts (none when it drafted none)."""
    from training.rollouts import read_jsonl
    from training.vstar import DraftRollout

    path = run.data_dir / "orm_extra.jsonl"
    if run.cfg.orm.extra_questions <= 0 or not path.exists():
        return []
    return [DraftRollout.from_dict(d) for d in read_jsonl(path)]


def _base(run: Run) -> str:
    if run.cfg.model.base is None:
        raise ValueError("init: 'base' needs model.base; from scratch, start from the policy")
    return run.cfg.model.base


def stage_orm(run: Run) -> dict[str, Any]:
    return _reward_stage(run, Role.ORM, Stage.ORM)


def stage_sorm(run: Run) -> dict[str, Any]:
    return _reward_stage(run, Role.SORM, Stage.SORM)


def stage_refiners(run: Run) -> dict[str, Any]:
    from training.modeling import load_causal_lm
    from training.pairs import PairKind, global_pairs, local_pairs, sibling_local_pairs
    from training.policy import fit_sft
    from training.refiners import evaluate_refiner, refine_examples
    from training.rollouts import read_heldout, read_rollouts, write_jsonl_atomic

    cfg, seed = run.cfg.refiners, run.seed(Stage.REFINERS)
    policy = run.require(Role.POLICY)
    rollouts = read_rollouts(run.rollouts_dir)
    problems = run.problems_by_id()
    tok = run.tokenizer()
    out: dict[str, Any] = {"counts": {}, "metrics": {}, "hashes": {}}
    # The global refiner needs only outcome labels, so the ORM's extra drafts widen its data
    # (4x on the tiny preset). The local one is placed by V* labels on the rollouts; on the extra
    # drafts (no V*) a correct sibling of the same question places it (sibling_local_pairs).
    extra = _read_orm_extra(run) if cfg.global_extra_drafts or cfg.local_extra_drafts else []
    for role in (Role.REFINE_GLOBAL, Role.REFINE_LOCAL):
        kw: dict[str, Any] = {"seed": seed, "keep_share": cfg.keep_share}
        if role is Role.REFINE_GLOBAL:
            more = extra if cfg.global_extra_drafts else []
            pairs = global_pairs(
                [*rollouts, *more], problems, use_reference=cfg.use_reference, **kw
            )
        else:
            more = extra if cfg.local_extra_drafts else []
            pairs = local_pairs(rollouts, problems, use_reference=cfg.use_reference, **kw)
            pairs += sibling_local_pairs(more, problems, **kw)
        epochs = cfg.local_epochs if role is Role.REFINE_LOCAL else None
        role_cfg = cfg if epochs is None else dataclasses.replace(cfg, epochs=epochs)
        if not pairs:
            raise ValueError(f"{role}: no refinement pairs (are there incorrect drafts?)")
        if run.acc.is_main_process:
            write_jsonl_atomic(run.data_dir / f"{role}_pairs.jsonl", (p.to_dict() for p in pairs))
        model = load_causal_lm(policy if cfg.init == "policy" else _base(run), run.cfg.model)
        # As adapters, the refiners are LoRA fine-tunes of the policy, saved unmerged over it.
        adapter_of = Role.POLICY if cfg.adapters else None
        if cfg.adapters and cfg.init != "policy":
            raise ValueError("refiners.adapters needs refiners.init=policy (adapters of it)")
        fit_cfg = (
            dataclasses.replace(run.cfg, model=dataclasses.replace(run.cfg.model, lora=True))
            if cfg.adapters
            else run.cfg
        )
        model, result = fit_sft(
            model, tok, refine_examples(tok, pairs), role_cfg, fit_cfg, seed=seed, desc=str(role)
        )
        path = run.save_model(model, role, {"train": result.to_dict()}, adapter_of=adapter_of)
        evaluation: dict[str, Any] = {}
        if run.acc.is_main_process:
            heldout = read_heldout(run.rollouts_dir)
            evaluation = evaluate_refiner(role, str(path), heldout, problems, run.cfg)
            run.update_metrics(role, {"heldout": evaluation})
        keeps = sum(p.kind is PairKind.KEEP for p in pairs)
        out["counts"][str(role)] = {
            "pairs": len(pairs),
            "keep_pairs": keeps,
            "drafts": len(rollouts) + len(more),
            "extra_drafts": len(more),
        }
        out["metrics"][str(role)] = {"heldout": evaluation, "final_loss": result.final_loss}
        out["hashes"][str(role)] = _ckpt_hash(path)
        # What serving loads for this role: a full checkpoint, or an adapter over a base.
        out.setdefault("serving", {})[str(role)] = (
            {"base": str(Role.POLICY), "adapter": str(role)}
            if cfg.adapters
            else {"base": str(role), "adapter": None}
        )
    return out


def stage_reranker(run: Run) -> dict[str, Any]:
    """Linear rerankers fitted on within-question pairs of the policy's outcome-labelled
    samples (training.reranker); the recipe's `reranker.default` becomes the service's."""
    from engines.reranker import RERANKER_DIR, Reranker
    from training.reranker import (
        candidate_questions,
        candidate_rows,
        collect_samples,
        read_features,
        sample_rows,
        save_rerankers,
        save_rows,
        train_rerankers,
    )
    from training.rollouts import read_rollouts

    cfg = run.cfg.reranker
    policy, orm = run.require(Role.POLICY), run.require(Role.ORM)
    rollouts = read_rollouts(run.rollouts_dir)
    extra = _read_orm_extra(run) if cfg.extra_drafts else []
    samples = collect_samples(
        rollouts,
        extra,
        continuations=cfg.continuations,
        max_steps=run.cfg.rollouts.max_steps,
    )
    questions = {pid: p.question for pid, p in run.problems_by_id().items()}
    out: dict[str, Any] = {}
    if run.acc.is_main_process:
        start = time.perf_counter()
        readings = read_features(
            samples,
            questions,
            policy,
            orm,
            backend=cfg.backend,
            max_batch_size=cfg.max_batch_size,
        )
        rows = sample_rows(samples, readings)
        read_s = time.perf_counter() - start
        # GLoRe's own candidates on training questions that no refiner pair came from: the
        # policy's likelihood favours its greedy draft over a refiner's rewrite, and only such
        # rows show a fit by how much.
        used = {r.problem_id for r in (*rollouts, *_read_orm_extra(run))}
        fresh = candidate_questions(
            run.problems("train"), used, cfg.candidate_questions, run.seed(Stage.RERANKER)
        )
        start = time.perf_counter()
        if fresh:
            rows += candidate_rows(run.out, fresh, backend=cfg.backend)
        candidates_s = time.perf_counter() - start
        if cfg.continuations and cfg.extra_drafts:
            # every row, for the dev ablation (training.reranker_ablation) to refit variants on
            save_rows(run.out / ".cache" / "reranker_rows.json", rows)
        fitted, report = train_rerankers(
            rows,
            cfg.variants,
            l2=cfg.l2,
            holdout_share=cfg.holdout_share,
            seed=run.seed(Stage.RERANKER),
        )
        meta = {name: {"heldout": report["heldout_pairwise"].get(name)} for name in fitted}
        meta[cfg.default] = {
            "heldout": report["heldout_pairwise"].get(cfg.default),
            "chosen": "recipe reranker.default (chosen on the dev split)",
        }
        path = save_rerankers(run.out / RERANKER_DIR, fitted, cfg.default, meta)
        out = {
            "counts": report["counts"],
            "metrics": {
                "default": Reranker.load(path).name,
                "heldout_pairwise": report["heldout_pairwise"],
                "heldout_pairwise_candidates": report["heldout_pairwise_candidates"],
                "feature_seconds": round(read_s, 1),
                "candidate_seconds": round(candidates_s, 1),
            },
            "hashes": {"reranker": dir_hash(path.parent, "*.json")},
        }
    run.acc.wait_for_everyone()
    return out


def stage_profile(run: Run) -> dict[str, Any]:
    """The question profile (training.profile): the training questions' words and longest
    length, and the policy's likelihood thresholds chosen on validation. `glore serve` warns
    with it; it needs only the data and the policy, so it runs on any finished run."""
    from training.profile import build_profile, save_profile

    policy = run.require(Role.POLICY)
    out: dict[str, Any] = {}
    if run.acc.is_main_process:
        profile = build_profile(
            run.problems("train"),
            run.problems("val"),
            policy,
            run.tokenizer(),
            run.cfg.profile,
            run.seed(Stage.PROFILE),
        )
        path = save_profile(profile, run.out)
        out = {
            "counts": {
                "known_words": len(profile.known_words),
                "val_questions": profile.stats["warned"]["val"]["questions"],
            },
            "metrics": {
                "thresholds": profile.thresholds.model_dump(),
                "false_alarm_rate": profile.false_alarm_rate,
                "warned": profile.stats["warned"],
                "mean_logprob": profile.stats["mean_logprob"],
            },
            "hashes": {"profile": file_hash(path)},
        }
    run.acc.wait_for_everyone()
    return out


def _ckpt_hash(path: Path) -> str:
    return dir_hash(path, "*.safetensors")


def _n_params(model: Any) -> dict[str, int]:
    """Parameters of the saved model (LoRA adapters are merged, so not counted) and trained."""
    named = list(model.named_parameters())
    return {
        "total": sum(p.numel() for n, p in named if "lora_" not in n),
        "trained": sum(p.numel() for _, p in named if p.requires_grad),
    }


STAGE_FUNCS: dict[Stage, Callable[[Run], dict[str, Any]]] = {
    Stage.DATA: stage_data,
    Stage.POLICY: stage_policy,
    Stage.ROLLOUTS: stage_rollouts,
    Stage.ORM: stage_orm,
    Stage.SORM: stage_sorm,
    Stage.REFINERS: stage_refiners,
    Stage.RERANKER: stage_reranker,
    Stage.PROFILE: stage_profile,
}


def _outputs_exist(run: Run, stage: Stage) -> bool:
    if stage is Stage.DATA:
        return (run.data_dir / "train.jsonl").exists() and run.tokenizer_dir.exists()
    if stage is Stage.ROLLOUTS:
        return (run.rollouts_dir / "heldout.jsonl").exists()
    if stage is Stage.RERANKER:
        return (run.out / "reranker" / "default.json").exists()
    if stage is Stage.PROFILE:
        from service.profile import PROFILE_FILE

        return (run.out / PROFILE_FILE).exists()
    roles = {
        Stage.POLICY: [Role.POLICY],
        Stage.ORM: [Role.ORM],
        Stage.SORM: [Role.SORM],
        Stage.REFINERS: [Role.REFINE_GLOBAL, Role.REFINE_LOCAL],
    }[stage]
    from training.modeling import is_checkpoint

    return all(is_checkpoint(run.checkpoint(r)) for r in roles)


def _say(run: Run, message: str) -> None:
    """One line per stage event, from the main process only."""
    if run.acc.is_main_process:
        print(f"[glore train] {message}", flush=True)


def run_stages(
    cfg: RunConfig, out: Path, stages: Sequence[Stage], *, force: bool = False
) -> Manifest:
    """Run `stages` in order (the data stage first when missing), skipping finished ones.

    A stage counts as finished when the manifest says so, its outputs exist and its inputs'
    config hash is unchanged; `force` reruns the named stages regardless.
    """
    torch.set_num_threads(max(1, cfg.threads))
    run = Run(cfg, out)
    manifest = Manifest.open(out / "manifest.json", cfg)
    if run.acc.is_main_process:
        (out / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    manifest.data["config_hash"] = cfg.section_hash(
        *INPUTS[Stage.REFINERS], "orm", "sorm", "reranker"
    )
    manifest.data["processes"] = run.acc.num_processes
    manifest.data["text_fingerprint"] = text_fingerprint()
    for stage in [Stage.DATA, *stages]:
        entry = manifest.stage(stage)
        inputs_hash = _inputs_hash(cfg, manifest, stage)
        done = entry.get("status") == "done" and entry.get("config_hash") == inputs_hash
        if done and _outputs_exist(run, stage) and not (force and stage in stages):
            _say(run, f"{stage}: done earlier, skipped")
            continue
        if stage is Stage.ROLLOUTS and (
            entry.get("config_hash") != inputs_hash or (force and stage in stages)
        ):
            clean_stage(out, stage)  # shards of another policy or recipe: start over
        _say(run, f"{stage}: starting")
        entry.clear()
        entry.update(
            status="running",
            started=_now(),
            seed=run.seed(stage),
            config_hash=inputs_hash,
            text_fingerprint=text_fingerprint(),
        )
        if run.acc.is_main_process:
            manifest.save()
        start = time.perf_counter()
        try:
            report = STAGE_FUNCS[stage](run)
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            entry["seconds"] = round(time.perf_counter() - start, 1)
            if run.acc.is_main_process:
                manifest.save()
            raise
        entry.update(report)
        entry.update(status="done", finished=_now(), seconds=round(time.perf_counter() - start, 1))
        if run.acc.is_main_process:
            manifest.save()
        _say(run, f"{stage}: done in {entry['seconds']:.1f}s")
    total = sum(
        e.get("seconds", 0) for e in manifest.data["stages"].values() if e.get("status") == "done"
    )
    manifest.data["total_seconds"] = round(total, 1)
    manifest.data["summary"] = _summary(manifest.data["stages"])
    manifest.data["host"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # others' work slows timings too
    }
    if run.acc.is_main_process:
        manifest.save()
    return manifest


def _summary(stages: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a run, gathered from the stages that have finished."""

    def get(*path: str) -> Any:
        node: Any = stages
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    return {
        "policy_greedy_accuracy": get("policy", "metrics", "test", "greedy_accuracy"),
        "rollout_draft_accuracy": get("rollouts", "metrics", "correct_fraction"),
        "vstar_vs_exact_disagreement": get("rollouts", "metrics", "vstar_vs_exact", "rate"),
        "vstar_vs_exact_disagreement_no_consistency": get(
            "rollouts", "metrics", "vstar_vs_exact_no_consistency", "rate"
        ),
        "orm_outcome_auc": get("orm", "metrics", "heldout", "outcome_auc"),
        "orm_step_auc": get("orm", "metrics", "heldout", "step_auc"),
        "sorm_outcome_auc": get("sorm", "metrics", "heldout", "outcome_auc"),
        "sorm_step_auc": get("sorm", "metrics", "heldout", "step_auc"),
        "refine_global_fix_rate": get(
            "refiners", "metrics", "refine_global", "heldout", "fix_rate"
        ),
        "refine_global_keep_rate": get(
            "refiners", "metrics", "refine_global", "heldout", "keep_rate"
        ),
        "refine_local_fix_rate": get("refiners", "metrics", "refine_local", "heldout", "fix_rate"),
        "refine_local_keep_rate": get(
            "refiners", "metrics", "refine_local", "heldout", "keep_rate"
        ),
        "reranker_default": get("reranker", "metrics", "default"),
        "profile_thresholds": get("profile", "metrics", "thresholds"),
        "reranker_heldout_pairwise": {
            name: row.get("pairwise")
            for name, row in (get("reranker", "metrics", "heldout_pairwise") or {}).items()
        },
    }


def clean_stage(out: Path, stage: Stage) -> None:
    """Remove a stage's outputs (used by `--force` on rollouts, whose shards would resume)."""
    if stage is Stage.ROLLOUTS and (out / "rollouts").exists():
        shutil.rmtree(out / "rollouts")
