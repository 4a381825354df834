"""/solve without back-and-forth: the question is cleaned once and the clean text is what the
pipeline gets; the solver hands the routes the pipeline's Solution, and each renders its own
wire model; the routes' dependencies are declared once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

import service.solver
from engines.text import (
    TextContractError,
    clean_question,
    global_refine_prompt,
    local_refine_prompt,
    policy_prompt,
    question_in_prompt,
    reward_input,
)
from glore.app import create_app
from service.pipeline import PipelineConfig, Solution, StrategyName
from service.settings import Settings
from service.solver import Solver
from tests.support.fakes import make_engines

ROOT = Path(__file__).resolve().parents[3]
RAW = "Ann has\n3 [ bad ] pens <|STEP|>\tand buys\u200b 2 more. How many?"


def _cleaned_or_none(text: str) -> str | None:
    try:
        return clean_question(text)
    except TextContractError:
        return None


# Any text, and text made of what the cleaning rewrites (marker and tag pieces, full-width
# brackets, whitespace, control and format characters).
@settings(max_examples=300, deadline=None)
@given(
    st.text()
    | st.text(alphabet=st.sampled_from("ab [BAD]<|step|>\n\t\u3000\uff3b\uff3d\u200b\x00 "))
)
def test_cleaning_a_clean_question_changes_nothing(text: str) -> None:
    """The prompt builders stay defensive and clean again; since cleaning is idempotent, every
    prompt of the cleaned question is the prompt of the raw one."""
    cleaned = _cleaned_or_none(text)
    if cleaned is None:
        return
    assert clean_question(cleaned) == cleaned
    assert policy_prompt(cleaned) == policy_prompt(text)
    assert question_in_prompt(cleaned) == question_in_prompt(text)
    assert global_refine_prompt(cleaned, "1 + 1 = 2") == global_refine_prompt(text, "1 + 1 = 2")
    draft = "1 + 1 = 2\n2 + 2 = 5"
    assert local_refine_prompt(cleaned, draft, 1) == local_refine_prompt(text, draft, 1)
    assert reward_input(cleaned, ["1 + 1 = 2"]) == reward_input(text, ["1 + 1 = 2"])


def test_the_solver_passes_the_cleaned_question_to_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []
    real = service.solver.solve

    async def spy(question: str, *args: Any) -> Solution:
        seen.append(question)
        return await real(question, *args)

    monkeypatch.setattr(service.solver, "solve", spy)
    with TestClient(create_app(Settings(log_level="WARNING"), make_engines())) as client:
        r = client.post("/solve", json={"question": RAW, "strategy": "greedy"})
        assert r.status_code == 200, r.text
        chat = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": RAW}], "strategy": "greedy"},
        )
        assert chat.status_code == 200, chat.text
    assert seen == [clean_question(RAW)] * 2
    assert "\n" not in seen[0] and "[ bad ]" not in seen[0]


def test_check_question_returns_the_text_the_models_will_see() -> None:
    app = create_app(Settings(log_level="WARNING"), make_engines())
    assert Solver(app.state.glore).check_question(RAW, ["body", "question"]) == clean_question(RAW)


async def test_the_solver_returns_the_pipelines_solution() -> None:
    engines = make_engines()
    app = create_app(Settings(log_level="WARNING"), engines)
    async with app.router.lifespan_context(app):
        solver = Solver(app.state.glore)

        async def connected() -> bool:
            return False

        solved = await solver.run(
            clean_question(RAW),
            StrategyName.GREEDY,
            PipelineConfig(),
            timeout_s=None,
            is_disconnected=connected,
        )
    assert isinstance(solved.solution, Solution)
    assert solved.solution.strategy is StrategyName.GREEDY
    assert solved.solution.winner.candidate.label == "draft"
    assert solved.warnings == []
    assert solved.seconds > 0


def test_the_chat_reply_is_the_winner_of_the_solve_it_carries() -> None:
    with TestClient(create_app(Settings(log_level="WARNING"), make_engines())) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": RAW}], "refine": "always"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    glore = body["glore"]
    [winner] = [c for c in glore["candidates"] if c["label"] == glore["winner"]]
    assert body["choices"][0]["message"]["content"] == glore["solution"]
    assert body["choices"][0]["finish_reason"] == winner["finish_reason"]
    assert body["usage"]["completion_tokens"] == glore["usage"]["completion_tokens"]


def test_the_routes_dependencies_are_declared_once() -> None:
    """Every `Depends(...)` of the routes lives in routers/deps.py."""
    declared = {
        p.name: len(re.findall(r"\bDepends\(", p.read_text()))
        for p in (ROOT / "routers").glob("*.py")
    }
    assert declared.pop("deps.py") >= 1
    assert declared and not any(declared.values()), declared
