"""The global and local refiners: SFT on (draft -> fix or keep) pairs built from the rollouts'
V* labels and the ORM's outcome-labelled extra drafts, as full checkpoints or LoRA adapters of
the policy."""

from __future__ import annotations

import dataclasses
from typing import Any

from engines.base import Role
from training.graph import Report, Run, StageSpec, checkpoint_hash, dig
from training.modeling import load_causal_lm
from training.pairs import PairKind, global_pairs, local_pairs, sibling_local_pairs
from training.policy import fit_sft
from training.refiners import evaluate_refiner, refine_examples
from training.rollouts import read_heldout, read_rollouts, write_jsonl_atomic
from training.stages.orm import read_extra_drafts


def stage_refiners(run: Run, seed: int) -> Report:
    cfg = run.cfg.refiners
    policy = run.require(Role.POLICY)
    rollouts = read_rollouts(run.rollouts_dir)
    problems = run.problems_by_id()
    tok = run.tokenizer()
    out: dict[str, Any] = {"counts": {}, "metrics": {}, "hashes": {}}
    # The global refiner needs only outcome labels, so the ORM's extra drafts widen its data
    # (4x on the tiny preset). The local one is placed by V* labels on the rollouts; on the extra
    # drafts (no V*) a correct sibling of the same question places it (sibling_local_pairs).
    extra = read_extra_drafts(run) if cfg.global_extra_drafts or cfg.local_extra_drafts else []
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
        model = load_causal_lm(policy if cfg.init == "policy" else run.base_model(), run.cfg.model)
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
        out["hashes"][str(role)] = checkpoint_hash(path)
        # What serving loads for this role: a full checkpoint, or an adapter over a base.
        out.setdefault("serving", {})[str(role)] = (
            {"base": str(Role.POLICY), "adapter": str(role)}
            if cfg.adapters
            else {"base": str(role), "adapter": None}
        )
    return out


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{role}_{rate}": dig(entry, "metrics", str(role), "heldout", rate)
        for role in (Role.REFINE_GLOBAL, Role.REFINE_LOCAL)
        for rate in ("fix_rate", "keep_rate")
    }


SPEC = StageSpec(
    name="refiners",
    sections=("refiners",),
    upstream=("rollouts", "orm"),  # the global refiner reads the ORM's extra drafts
    outputs=(Role.REFINE_GLOBAL, Role.REFINE_LOCAL),
    run=stage_refiners,
    summary=summary,
)
