"""A live `glore serve` on the smoke-trained run, question profile included: warnings in /solve,
in the chat reply and in /metrics, answers unchanged by them; and a question near the context
limit, whose global refinement no longer fits, answered without it instead of failing."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engines.text import policy_prompt
from tests.support.server import ServerHandle, start_server
from training.profile import reversed_words

# The global refiner gets a shorter context than the other roles (vLLM calls the option
# max_model_len, and so does the transformers backend), as a deployment may give a role.
REFINER_CONTEXT = 300
ENV = {
    "OMP_NUM_THREADS": "1",
    "GLORE_REFINE_GLOBAL__OPTIONS": json.dumps({"max_model_len": REFINER_CONTEXT}),
}


@pytest.fixture(scope="module")
def server(smoke_run: Path) -> Iterator[ServerHandle]:
    with start_server(smoke_run, env=ENV) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def val_questions(smoke_run: Path) -> list[str]:
    return [json.loads(line)["question"] for line in (smoke_run / "data" / "val.jsonl").open()]


def solve(client: httpx.Client, question: str, **knobs: Any) -> dict[str, Any]:
    r = client.post("/solve", json={"question": question, "max_new_tokens": 24, **knobs})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def metric(client: httpx.Client, series: str) -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_validation_questions_earn_no_warning_as_the_profile_stage_measured(
    client: httpx.Client, smoke_run: Path, val_questions: list[str]
) -> None:
    entry = json.loads((smoke_run / "manifest.json").read_text())["stages"]["profile"]
    assert entry["metrics"]["warned"]["val"]["any"] == 0
    for question in val_questions[:3]:
        assert solve(client, question, strategy="greedy")["warnings"] == []


def test_a_question_of_unseen_words_is_answered_with_warnings_that_metrics_count(
    client: httpx.Client, val_questions: list[str]
) -> None:
    before = metric(client, 'glore_warnings_total{code="unseen_words"}')
    odd = reversed_words(val_questions[0])
    body = solve(client, odd)
    codes = [w["code"] for w in body["warnings"]]
    assert "unseen_words" in codes and "unlikely_question" in codes
    assert all(w["message"] for w in body["warnings"])
    assert metric(client, 'glore_warnings_total{code="unseen_words"}') == before + 1
    # every code has a series from the start, at zero until it fires
    assert 'glore_warnings_total{code="longer_than_training"}' in client.get("/metrics").text


def test_the_chat_reply_carries_the_same_warnings_in_its_extra_field(
    server: ServerHandle, val_questions: list[str]
) -> None:
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
    completion = oai.chat.completions.create(
        model="glore",
        messages=[{"role": "user", "content": reversed_words(val_questions[1])}],
        max_tokens=24,
    )
    extra = completion.model_extra or {}
    assert extra["warnings"] == extra["glore"]["warnings"]
    assert "unseen_words" in [w["code"] for w in extra["warnings"]]


def test_warnings_never_change_the_answer(
    client: httpx.Client, smoke_run: Path, tmp_path: Path, val_questions: list[str]
) -> None:
    bare = tmp_path / "run"
    shutil.copytree(smoke_run, bare, ignore=shutil.ignore_patterns("question_profile.json"))
    odd = reversed_words(val_questions[0])
    with start_server(bare, env=ENV) as other:
        assert "no question profile" in other.logs()
        with httpx.Client(base_url=other.url, timeout=120) as plain:
            without = solve(plain, odd, refine="always")
    with_warnings = solve(client, odd, refine="always")
    assert without["warnings"] == [] and with_warnings["warnings"]
    for key in ("answer", "solution", "winner", "candidates", "decision"):
        assert with_warnings[key] == without[key], key


def near_the_limit(smoke_run: Path, val_questions: list[str], target: int) -> str:
    """A question whose policy prompt takes between `target` and `target` + 12 tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smoke_run / "tokenizer"))
    words: list[str] = []
    pool = " ".join(val_questions).split()
    for word in pool * 10:
        question = " ".join([*words, word])
        if len(tok.encode(policy_prompt(question), add_special_tokens=False)) > target:
            break
        words.append(word)
    question = " ".join(words)
    assert target - 12 < len(tok.encode(policy_prompt(question), add_special_tokens=False))
    return question


def test_a_question_near_the_context_limit_drops_the_refinement_that_does_not_fit(
    client: httpx.Client, smoke_run: Path, val_questions: list[str]
) -> None:
    # 440 of the policy's 512 tokens: the draft (24 tokens at most) fits, the ORM reads it, and
    # the global refinement prompt (question + draft) cannot fit the refiner's 300.
    question = near_the_limit(smoke_run, val_questions, 440)
    series = 'glore_dropped_candidates_total{kind="global",stage="refine",strategy="glore"}'
    before = metric(client, series)
    body = solve(client, question, refine="always")
    decision = body["decision"]
    assert decision["action"] == "refine"
    [dropped] = [d for d in decision["dropped"] if d["candidate"] == "global"]
    assert dropped["stage"] == "refine"
    assert f"the model takes {REFINER_CONTEXT}" in dropped["message"]
    assert "global" not in [c["label"] for c in body["candidates"]]
    assert body["candidates"][0]["label"] == "draft" and body["solution"]
    assert metric(client, series) == before + 1
    assert "longer_than_training" in [w["code"] for w in body["warnings"]]


def test_a_question_whose_draft_prompt_cannot_fit_is_still_a_422(
    client: httpx.Client, smoke_run: Path, val_questions: list[str]
) -> None:
    question = near_the_limit(smoke_run, val_questions, 530)
    r = client.post("/solve", json={"question": question})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and "512" in error["message"]
