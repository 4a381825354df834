"""The pipeline on the real HF engines and tiny trained checkpoints: offline calls and the app's
answers come from the same code, so they agree exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from engines.base import Role, ScoreRequest
from engines.registry import EngineSet, load_engines
from engines.text import extract_answer
from glore.app import create_app
from service.pipeline import (
    Action,
    CandidateKind,
    LocalWhenUnflagged,
    PipelineConfig,
    RefineMode,
    StrategyName,
    solve,
)
from service.settings import Settings
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

CFG = PipelineConfig(max_new_tokens=64, n=3, seed=5)


@pytest.fixture(scope="module")
async def engines(tiny_checkpoints: TinyCheckpoints) -> AsyncIterator[EngineSet]:
    settings = Settings(run_dir=tiny_checkpoints.run_dir)
    loaded = load_engines(settings.engine_specs())
    yield loaded
    await loaded.close()


@pytest.fixture(scope="module")
def questions() -> list[str]:
    return [p.question for p in tiny_problems(3, seed=21)]


@pytest.mark.parametrize("strategy", list(StrategyName))
async def test_offline_and_online_answers_agree(
    engines: EngineSet, questions: list[str], strategy: str
) -> None:
    app = create_app(Settings(log_level="WARNING"), engines)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for question in questions:
                offline = await solve(question, engines, CFG, strategy)
                r = await client.post(
                    "/solve",
                    json={
                        "question": question,
                        "strategy": strategy,
                        "max_new_tokens": CFG.max_new_tokens,
                        "n": CFG.n,
                        "seed": CFG.seed,
                        "include_trace": True,
                    },
                )
                assert r.status_code == 200, r.text
                online = r.json()
                assert online["solution"] == offline.winner.candidate.text
                assert online["winner"] == offline.winner.candidate.label
                assert [c["text"] for c in online["candidates"]] == [
                    s.candidate.text for s in offline.candidates
                ]
                assert online["votes"] == offline.votes
                if strategy is StrategyName.SELF_CONSISTENCY:  # no reward model consulted
                    assert [c["orm_score"] for c in online["candidates"]] == [None] * CFG.n
                    continue
                assert [c["orm_score"] for c in online["candidates"]] == pytest.approx(
                    [s.orm_score for s in offline.candidates]
                )


async def test_glore_scores_match_a_direct_call_to_the_reward_models(
    engines: EngineSet, questions: list[str]
) -> None:
    question = questions[0]
    # `lowest`: a local candidate even when the SORM flags no step, so there is one to check.
    cfg = PipelineConfig(refine=RefineMode.ALWAYS, local_when_unflagged=LocalWhenUnflagged.LOWEST)
    sol = await solve(question, engines, cfg, "glore")
    draft = sol.draft
    assert draft is not None and draft.sorm is not None and draft.orm is not None
    [orm] = await engines.orm.score([ScoreRequest(question, draft.candidate.steps)])
    [sorm] = await engines.sorm.score([ScoreRequest(question, draft.candidate.steps)])
    assert draft.orm.step_probs == pytest.approx(orm.step_probs, abs=1e-5)
    assert draft.sorm.step_probs == pytest.approx(sorm.step_probs, abs=1e-5)
    assert sol.plan.action is Action.REFINE
    kinds = [s.candidate.kind for s in sol.candidates]
    assert kinds == [CandidateKind.DRAFT, CandidateKind.GLOBAL, CandidateKind.LOCAL]
    local = sol.candidates[2].candidate
    target = sol.plan.local_target
    assert target is not None
    # the local refinement keeps the draft's steps before the critique verbatim
    assert local.steps[:target] == draft.candidate.steps[:target]
    assert sol.winner.orm_score == max(s.orm_score for s in sol.candidates)
    assert all(s.candidate.answer == extract_answer(s.candidate.text) for s in sol.candidates)
    assert sol.tokens[Role.POLICY] == draft.candidate.num_tokens
