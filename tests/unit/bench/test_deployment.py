"""`--backend vllm+hf`: which backend serves which role in a bench, and with what options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.live import BENCH_OPTIONS, Deployment
from bench.service import report_name
from engines.base import Role


def test_one_backend_serves_every_role_with_its_bench_options(tmp_path: Path) -> None:
    where = Deployment.parse("vllm")
    assert where.label == "vllm" and report_name(where.label) == "bench-service-vllm"
    env = where.env()
    for role in Role:
        key = role.value.upper()
        assert env[f"GLORE_{key}__BACKEND"] == "vllm"
        assert json.loads(env[f"GLORE_{key}__OPTIONS"]) == BENCH_OPTIONS["vllm"]
    specs = where.specs(tmp_path)
    assert {s.backend for s in specs.values()} == {"vllm"}
    assert specs[Role.SORM].path == str(tmp_path / "sorm")


def test_generators_and_scorers_on_different_backends_keep_their_own_options(
    tmp_path: Path,
) -> None:
    where = Deployment.parse("vllm+hf", {"cpu_kvcache_space_gib": 0.5})
    assert where.label == "vllm+hf" and report_name(where.label) == "bench-service-vllm-hf"
    env = where.env()
    for role in (Role.POLICY, Role.REFINE_GLOBAL, Role.REFINE_LOCAL):
        assert env[f"GLORE_{role.value.upper()}__BACKEND"] == "vllm"
        assert json.loads(env[f"GLORE_{role.value.upper()}__OPTIONS"]) == {
            "cpu_kvcache_space_gib": 0.5
        }
    for role in (Role.ORM, Role.SORM):
        assert env[f"GLORE_{role.value.upper()}__BACKEND"] == "hf"
        # transformers' options model refuses vLLM's: the scorers get none of them.
        assert f"GLORE_{role.value.upper()}__OPTIONS" not in env
    specs = where.specs(tmp_path)
    assert specs[Role.ORM].backend == "hf" and specs[Role.ORM].options == {}
    assert specs[Role.POLICY].options == {"cpu_kvcache_space_gib": 0.5}


@pytest.mark.parametrize("text", ["tgi", "vllm+", "hf+vllm+hf", "+hf"])
def test_an_unknown_or_malformed_deployment_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="--backend"):
        Deployment.parse(text)
