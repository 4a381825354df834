"""Several real vLLM engines loading together: each serves its roles, and a role that fails to
load takes none of the others' processes with it, nor leaves them behind."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil
import pytest

from engines.base import EngineLoadError, EngineSpec, Role, SamplingParams, ScoreRequest
from engines.registry import load_engines
from engines.text import policy_prompt
from tests.integration.engines.conftest import VLLM_OPTIONS
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

pytestmark = pytest.mark.vllm


def _specs(checkpoints: TinyCheckpoints) -> dict[Role, EngineSpec]:
    """Three engines: the policy (with refine_local), refine_global (another seed, so an engine
    of its own) and the ORM (with the SORM)."""
    generator = str(checkpoints.policy)
    scorer = str(checkpoints.scorer)
    return {
        Role.POLICY: EngineSpec(generator, "vllm", dict(VLLM_OPTIONS)),
        Role.REFINE_LOCAL: EngineSpec(generator, "vllm", dict(VLLM_OPTIONS)),
        Role.REFINE_GLOBAL: EngineSpec(generator, "vllm", {**VLLM_OPTIONS, "seed": 1}),
        Role.ORM: EngineSpec(scorer, "vllm", dict(VLLM_OPTIONS)),
        Role.SORM: EngineSpec(scorer, "vllm", dict(VLLM_OPTIONS)),
    }


def _engine_processes(before: set[int]) -> list[psutil.Process]:
    """vLLM processes (engine cores, workers) started since `before` and still running."""
    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in before:
            continue
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "VLLM" in " ".join([*p.cmdline(), p.name()]):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _wait_gone(before: set[int], timeout_s: float = 120) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := _engine_processes(before)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


async def test_vllm_engines_loaded_together_each_serve_their_roles(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    before = _children()
    engines = load_engines(_specs(tiny_checkpoints))
    try:
        assert len(engines.unique_engines()) == 3
        assert engines.policy is engines.refine_local
        assert engines.refine_global is not engines.policy and engines.orm is engines.sorm
        assert list(engines.load_seconds) == ["policy+refine_local", "refine_global", "orm+sorm"]
        # Each engine runs its own EngineCore process.
        cores = [p for p in _engine_processes(before) if "EngineCore" in " ".join(p.cmdline())]
        assert len(cores) == 3

        problem = tiny_problems(1, seed=3)[0]
        prompt = [policy_prompt(problem.question)]
        for role in (Role.POLICY, Role.REFINE_GLOBAL, Role.REFINE_LOCAL):
            ((c,),) = await engines.generator(role).generate(
                prompt, SamplingParams(max_new_tokens=32)
            )
            assert c.text and c.finish_reason in ("stop", "length")
        for role in (Role.ORM, Role.SORM):
            (s,) = await engines.scorer(role).score([ScoreRequest(problem.question, problem.steps)])
            assert len(s.step_probs) == len(problem.steps)
        assert all(h.healthy for h in engines.health().values())
    finally:
        await engines.close()
    assert not _wait_gone(before)


def test_a_role_failing_while_others_load_leaves_no_vllm_process_behind(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    # A scorer whose weights are cut short: its config reads fine, and its EngineCore fails
    # while loading, as the other engines load beside it.
    broken = tmp_path / "sorm"
    shutil.copytree(tiny_checkpoints.scorer, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    specs = _specs(tiny_checkpoints)
    specs[Role.SORM] = EngineSpec(str(broken), "vllm", dict(VLLM_OPTIONS))

    before = _children()
    with pytest.raises(EngineLoadError) as err:
        load_engines(specs)
    assert err.value.role == "sorm" and err.value.path == str(broken)
    assert not _wait_gone(before)
