"""The question profile (training.profile): the training questions' words and longest length,
and the policy's likelihood thresholds chosen on validation. `glore serve` warns with it; it needs
only the data and the policy, so it runs on any finished run."""

from __future__ import annotations

from typing import Any

from engines.base import Role
from service.profile import PROFILE_FILE
from training.graph import Report, Run, StageSpec, dig, file_hash
from training.profile import build_profile, save_profile


def stage_profile(run: Run, seed: int) -> Report:
    policy = run.require(Role.POLICY)
    out: dict[str, Any] = {}
    if run.acc.is_main_process:
        profile = build_profile(
            run.problems("train"),
            run.problems("val"),
            policy,
            run.tokenizer(),
            run.cfg.profile,
            seed,
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


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {"profile_thresholds": dig(entry, "metrics", "thresholds")}


SPEC = StageSpec(
    name="profile",
    sections=("profile",),
    upstream=("data", "policy"),
    outputs=(PROFILE_FILE,),
    run=stage_profile,
    summary=summary,
)
