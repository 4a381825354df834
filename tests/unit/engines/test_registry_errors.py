"""Loading errors name the role and the path, before any model is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.base import Backend, EngineLoadError, EngineSpec, Role
from engines.registry import EngineSet, load_engine, load_engines


def test_a_missing_checkpoint_names_the_role_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(EngineLoadError) as err:
        load_engine(Role.POLICY, EngineSpec(str(missing)))
    assert err.value.role == "policy"
    assert "policy" in str(err.value) and str(missing) in str(err.value)


def test_a_missing_scorer_for_vllm_names_the_role_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "orm"
    with pytest.raises(EngineLoadError, match="orm") as err:
        load_engine(Role.ORM, EngineSpec(str(missing), backend=Backend.VLLM))
    assert str(missing) in str(err.value)


def test_an_unknown_option_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="max_batch") as err:
        load_engine(Role.SORM, EngineSpec(str(tmp_path), options={"max_batch": 3}))
    assert err.value.role == "sorm"


def test_an_unknown_backend_is_refused_by_name(tmp_path: Path) -> None:
    spec = EngineSpec(str(tmp_path), backend="tgi")
    with pytest.raises(EngineLoadError, match="tgi"):
        load_engine(Role.REFINE_LOCAL, spec)


def test_load_engines_reports_the_first_role_that_fails(tmp_path: Path) -> None:
    specs = {Role.REFINE_GLOBAL: EngineSpec(str(tmp_path / "missing"))}
    with pytest.raises(EngineLoadError, match="refine_global"):
        load_engines(specs)


def test_an_engine_set_names_a_role_it_does_not_hold() -> None:
    engines = EngineSet({})
    with pytest.raises(KeyError, match="policy"):
        _ = engines.policy
    assert engines.roles == set()
    assert engines.health() == {}
