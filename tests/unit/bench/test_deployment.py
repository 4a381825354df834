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


def _model(folder: Path, weights: bytes) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)


def _adapter(folder: Path, targets: list[str]) -> None:
    folder.mkdir(parents=True)
    config = {"base_model_name_or_path": "../policy", "target_modules": targets}
    (folder / "adapter_config.json").write_text(json.dumps(config))


def test_remote_roles_each_get_a_server_holding_their_own_weights(tmp_path: Path) -> None:
    from bench.model_servers import plan_servers

    _model(tmp_path / "policy", b"policy")
    _adapter(tmp_path / "refine_global", ["q_proj", "v_proj"])
    _model(tmp_path / "refine_local", b"local")
    _model(tmp_path / "orm", b"reward")
    _model(tmp_path / "sorm", b"reward")  # the same weights: one pooling server for both
    plan = plan_servers(tmp_path)
    assert len(plan.servers) == 3
    policy, local, reward = plan.servers
    assert policy.args[policy.args.index("--lora-modules") + 1] == (
        f"refine_global={tmp_path / 'refine_global'}"
    )
    assert policy.args[policy.args.index("--lora-target-modules") + 1 :][:2] == ["q_proj", "v_proj"]
    assert local.model == str(tmp_path / "refine_local") and "--enable-lora" not in local.args
    assert reward.args[reward.args.index("--runner") + 1] == "pooling"
    o = plan.options
    # The adapter rides on the policy's server; the registry picks it by the role's name.
    assert o["policy"] == o["refine_global"] == {"base_url": policy.url, "model": "policy"}
    assert o["refine_local"] == {"base_url": local.url, "model": "refine_local"}
    assert o["orm"] == o["sorm"] == {"base_url": reward.url, "model": "orm"}


def test_given_urls_serve_their_roles_and_start_nothing(tmp_path: Path) -> None:
    from bench.model_servers import plan_servers

    _model(tmp_path / "orm", b"orm")
    _model(tmp_path / "sorm", b"sorm")
    plan = plan_servers(tmp_path, ("policy", "orm", "sorm"), policy_url="http://p:1")
    assert {o["base_url"] for r, o in plan.options.items() if r == "policy"} == {"http://p:1"}
    # Two reward checkpoints: two pooling servers, each scoring with its own weights.
    assert [s.model for s in plan.servers] == [str(tmp_path / "orm"), str(tmp_path / "sorm")]


def test_a_remote_deployment_takes_each_roles_server_into_its_env_and_specs(
    tmp_path: Path,
) -> None:
    from bench.orchestrator import remote_env

    where = Deployment.parse("remote")
    assert where.remote_roles == [r.value for r in Role]
    options = {"policy": {"base_url": "http://p:1", "model": "policy"}}
    options["orm"] = {"base_url": "http://s:2"}
    served = where.served_by(options)
    assert served.specs(tmp_path)[Role.ORM].options == {"base_url": "http://s:2"}
    env = remote_env(options)
    assert env["GLORE_SORM__BACKEND"] == "remote" and "GLORE_SORM__OPTIONS" not in env
    assert json.loads(env["GLORE_POLICY__OPTIONS"]) == options["policy"]
    assert Deployment.parse("vllm+remote").remote_roles == ["orm", "sorm"]
