"""One function builds a strategy's configuration from a request's knobs and the server's
defaults (service.settings.pipeline_config): the routes, `glore eval` and the service benchmark's
replay all call it, so none can drift from the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.direct import pipeline_config as bench_pipeline_config
from engines.reranker import ORM_RERANKER
from glore.app import create_app
from service.pipeline import LocalWhenUnflagged, PipelineConfig, RefineMode, StrategyName
from service.schemas import ChatCompletionRequest, SolveRequest
from service.settings import SERVING_FILE, Defaults, Limits, Settings, pipeline_config
from service.solver import Solver
from tests.support.fakes import make_engines


def test_the_built_in_defaults_are_the_pipelines_own() -> None:
    """`glore eval` builds its base configuration from Defaults(); it must be what a bare
    PipelineConfig() was before (the same thresholds, tokens, samples and temperatures)."""
    strategy, cfg = pipeline_config(Defaults())
    assert strategy is StrategyName.GLORE
    assert cfg == PipelineConfig()


def test_knobs_win_over_defaults_and_none_means_the_default() -> None:
    defaults = Defaults(orm_threshold=0.3, sorm_threshold=0.2, n=5, max_new_tokens=64)
    strategy, cfg = pipeline_config(
        defaults,
        strategy=StrategyName.BEST_OF_N,
        refine=RefineMode.ALWAYS,
        orm_threshold=0.0,  # a falsy knob is still a knob
        local_when_unflagged=LocalWhenUnflagged.LOWEST,
        temperature=0.0,
        seed=7,
    )
    assert strategy is StrategyName.BEST_OF_N
    assert cfg.refine is RefineMode.ALWAYS
    assert cfg.orm_threshold == 0.0
    assert cfg.sorm_threshold == 0.2
    assert cfg.local_when_unflagged is LocalWhenUnflagged.LOWEST
    assert cfg.temperature == 0.0
    assert cfg.seed == 7
    assert (cfg.n, cfg.max_new_tokens) == (5, 64)


def test_limits_bound_the_defaults_and_no_limits_bound_nothing() -> None:
    defaults = Defaults(n=8, max_new_tokens=512)
    limits = Limits(max_n=3, max_new_tokens=100)
    _, bounded = pipeline_config(defaults, limits=limits)
    assert (bounded.n, bounded.max_new_tokens) == (3, 100)
    _, free = pipeline_config(defaults, n=20, max_new_tokens=2000)
    assert (free.n, free.max_new_tokens) == (20, 2000)


def _serving_run(tmp_path: Path) -> Path:
    (tmp_path / SERVING_FILE).write_text(
        json.dumps({"sorm_threshold": 0.15, "orm_threshold": 0.35})
    )
    return tmp_path


@pytest.mark.parametrize(
    "body",
    [
        {"question": "q", "strategy": "greedy", "max_new_tokens": 96},
        {"question": "q", "strategy": "best_of_n", "n": 3, "max_new_tokens": 96, "seed": 11},
        {"question": "q", "strategy": "glore", "refine": "always", "max_new_tokens": 96},
        {"question": "q", "strategy": "glore", "refine": "auto", "max_new_tokens": 96},
    ],
)
def test_the_service_benchmark_replays_the_configuration_the_server_builds(
    tmp_path: Path, body: dict[str, Any]
) -> None:
    """The benchmark times the engine calls of an in-process solve against /solve; it used to
    rebuild the configuration by hand and missed the run's serving.json thresholds."""
    run = _serving_run(tmp_path)
    app = create_app(Settings(run_dir=run, log_level="WARNING"), make_engines())
    request = SolveRequest.model_validate(body)
    server = Solver(app.state.glore).config(
        request,
        n=request.n,
        max_new_tokens=request.max_new_tokens,
        n_loc=["body", "n"],
        tokens_loc=["body", "max_new_tokens"],
    )
    assert bench_pipeline_config(body, run) == server
    assert server[1].orm_threshold == 0.35


def test_solve_and_chat_build_the_same_configuration_from_the_same_knobs() -> None:
    app = create_app(Settings(log_level="WARNING"), make_engines())
    solver = Solver(app.state.glore)
    knobs = {"strategy": "best_of_n", "sorm_threshold": 0.4, "seed": 3}
    solve = SolveRequest.model_validate({"question": "q", "n": 2, "max_new_tokens": 50, **knobs})
    chat = ChatCompletionRequest.model_validate(
        {
            "model": "glore",
            "messages": [{"role": "user", "content": "q"}],
            "num_samples": 2,
            "max_tokens": 50,
            **knobs,
        }
    )
    locs: dict[str, Any] = {"n_loc": ["n"], "tokens_loc": ["t"]}
    assert solver.config(solve, n=2, max_new_tokens=50, **locs) == solver.config(
        chat, n=2, max_new_tokens=50, **locs
    )
    assert solver.config(solve, n=2, max_new_tokens=50, **locs)[1].reranker is ORM_RERANKER
