"""engine_groups: which engines a run loads, read from its folders without loading a model."""

from __future__ import annotations

import json
from pathlib import Path

from engines.base import Role
from engines.registry import engine_groups, run_dir_specs


def _checkpoint(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


def _adapter(folder: Path, base: str = "../policy") -> None:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))


def test_a_full_run_loads_one_engine_per_role(tmp_path: Path) -> None:
    for role in Role:
        _checkpoint(tmp_path / role.value)
    groups = engine_groups(run_dir_specs(tmp_path))
    assert len(groups) == 5
    assert sorted(r for g in groups for r in g) == sorted(Role)


def test_refiners_as_adapters_share_the_policy_engine(tmp_path: Path) -> None:
    for role in (Role.POLICY, Role.ORM, Role.SORM):
        _checkpoint(tmp_path / role.value)
    for role in (Role.REFINE_GLOBAL, Role.REFINE_LOCAL):
        _adapter(tmp_path / role.value)
    for backend in ("hf", "vllm"):
        groups = engine_groups(run_dir_specs(tmp_path, backend=backend))
        assert len(groups) == 3, backend
        assert (Role.POLICY, Role.REFINE_GLOBAL, Role.REFINE_LOCAL) in groups
        assert (Role.ORM,) in groups and (Role.SORM,) in groups


def test_an_adapter_over_another_base_loads_its_own_engine(tmp_path: Path) -> None:
    for role in (Role.POLICY, Role.ORM, Role.SORM, Role.REFINE_LOCAL):
        _checkpoint(tmp_path / role.value)
    _checkpoint(tmp_path / "other")
    _adapter(tmp_path / Role.REFINE_GLOBAL.value, base="../other")
    groups = engine_groups(run_dir_specs(tmp_path))
    assert len(groups) == 5
    assert (Role.REFINE_GLOBAL,) in groups
