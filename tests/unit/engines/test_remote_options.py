"""The remote backend's options refuse what cannot work, by name, and the backend (with the
service around it) imports no torch: a replica whose roles are all remote stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engines.backends import engine_options
from engines.base import EngineLoadError, EngineSpec, Role


def _spec(**options: object) -> EngineSpec:
    return EngineSpec("/ckpt", "remote", dict(options))


def test_a_base_url_without_a_scheme_and_host_is_refused_naming_base_url() -> None:
    with pytest.raises(EngineLoadError, match=r"base_url: .*http\(s\) URL"):
        engine_options(Role.POLICY, _spec(base_url="policy:8000"))


def test_a_missing_base_url_is_refused_naming_it() -> None:
    with pytest.raises(EngineLoadError, match="base_url: Field required"):
        engine_options(Role.ORM, _spec())


def test_api_key_env_takes_a_variable_name_not_a_key() -> None:
    with pytest.raises(EngineLoadError, match=r"api_key_env: .*environment variable's name"):
        engine_options(Role.POLICY, _spec(base_url="http://p:8000", api_key_env="sk-12 34"))
    options = engine_options(Role.POLICY, _spec(base_url="http://p:8000/", api_key_env="VLLM_KEY"))
    assert options.api_key_env == "VLLM_KEY"  # type: ignore[attr-defined]
    assert options.base_url == "http://p:8000"  # type: ignore[attr-defined]


def test_a_scorer_refuses_the_generator_only_prompt_logprobs_option() -> None:
    with pytest.raises(EngineLoadError, match=r"unknown option\(s\) \['prompt_logprobs'\]"):
        engine_options(Role.SORM, _spec(base_url="http://s:8000", prompt_logprobs=False))


def test_the_remote_backend_and_the_service_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import engines.remote, engines.registry, engines.backends, glore.app, service.app\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
