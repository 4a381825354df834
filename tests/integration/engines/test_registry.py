"""The registry on real checkpoints: sharing, health, close, and clear load errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engines.base import EngineLoadError, EngineSpec, Role, SamplingParams, ScoreRequest
from engines.registry import load_engine, load_engines, run_dir_specs
from engines.text import policy_prompt
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

HF = {"device": "cpu"}


def _run_specs(run_dir: Path) -> dict[Role, EngineSpec]:
    specs = run_dir_specs(run_dir, options=HF)
    assert specs[Role.SORM].path == str(run_dir / "sorm")
    return specs


async def test_roles_on_the_same_checkpoint_share_one_engine(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    engines = load_engines(_run_specs(tiny_checkpoints.run_dir))
    try:
        assert engines.roles == set(Role)
        assert engines.policy is engines.refine_global is engines.refine_local
        assert engines.orm is engines.sorm
        assert engines.policy is not engines.orm
        assert len(engines.unique_engines()) == 2
        assert all(h.healthy for h in engines.health().values())

        problem = tiny_problems(1, seed=9)[0]
        ((c,),) = await engines.policy.generate(
            [policy_prompt(problem.question)], SamplingParams(max_new_tokens=64)
        )
        assert c.finish_reason == "stop"
        (s,) = await engines.sorm.score([ScoreRequest(problem.question, problem.steps)])
        assert len(s.step_probs) == len(problem.steps)
    finally:
        await engines.close()
    health = engines.health()
    assert set(health) == set(Role)
    assert not any(h.healthy for h in health.values())


def test_different_options_load_separate_engines(tiny_checkpoints: TinyCheckpoints) -> None:
    import asyncio

    specs = {
        Role.POLICY: EngineSpec(str(tiny_checkpoints.policy), options={"device": "cpu"}),
        Role.REFINE_GLOBAL: EngineSpec(
            str(tiny_checkpoints.policy), options={"device": "cpu", "max_batch_size": 8}
        ),
    }
    engines = load_engines(specs)
    try:
        assert engines.policy is not engines.refine_global
    finally:
        asyncio.run(engines.close())


def test_a_corrupt_config_names_the_role_and_the_path(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    broken = tmp_path / "policy"
    shutil.copytree(tiny_checkpoints.policy, broken)
    (broken / "config.json").write_text("{ this is not json")
    with pytest.raises(EngineLoadError) as err:
        load_engine(Role.POLICY, EngineSpec(str(broken), options=dict(HF)))
    assert err.value.role == "policy"
    assert "policy" in str(err.value) and str(broken) in str(err.value)


def test_missing_weights_name_the_role_and_the_path(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    broken = tmp_path / "orm"
    shutil.copytree(tiny_checkpoints.scorer, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(EngineLoadError, match="orm") as err:
        load_engine(Role.ORM, EngineSpec(str(broken), options=dict(HF)))
    assert str(broken) in str(err.value)


def test_a_causal_lm_is_refused_as_a_scorer(tiny_checkpoints: TinyCheckpoints) -> None:
    with pytest.raises(EngineLoadError, match="token-classification"):
        load_engine(Role.ORM, EngineSpec(str(tiny_checkpoints.policy), options=dict(HF)))


def test_a_scorer_with_three_labels_is_refused(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    broken = tmp_path / "sorm"
    shutil.copytree(tiny_checkpoints.scorer, broken)
    config = json.loads((broken / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config["label2id"] = {"a": 0, "b": 1, "c": 2}
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineLoadError, match="2 labels"):
        load_engine(Role.SORM, EngineSpec(str(broken), options=dict(HF)))


def test_a_failed_load_closes_the_engines_already_loaded(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    import threading

    before = {t.name for t in threading.enumerate()}
    specs = {
        Role.POLICY: EngineSpec(str(tiny_checkpoints.policy), options=dict(HF)),
        Role.ORM: EngineSpec(str(tmp_path / "missing"), options=dict(HF)),
    }
    with pytest.raises(EngineLoadError, match="orm"):
        load_engines(specs)
    leftover = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not any(name.startswith("glore-") for name in leftover)
