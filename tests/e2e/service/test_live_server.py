"""A live `glore serve` on the tiny trained checkpoints (real HF engines), end to end: /solve in
every strategy, the chat endpoint through the openai client (plain and streamed), and every error
status with its body (400, 401, 413, 422, 429, 503, 504)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engines.base import Role
from engines.text import extract_answer
from tests.support.live import RawRequest, in_flight, wait_until
from tests.support.server import ServerHandle, start_server
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

KEY = "e2e-secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 4096
MAX_QUESTION = 600
ENV = {
    "OMP_NUM_THREADS": "1",
    "GLORE_API_KEYS": f"{KEY},second-key",
    "GLORE_LIMITS__MAX_IN_FLIGHT": "1",
    "GLORE_LIMITS__MAX_QUEUE": "0",
    "GLORE_DEBUG_FAULTS": "true",  # to hold the policy: a solve stays in flight on demand
    "GLORE_LIMITS__RETRY_AFTER_S": "2",
    "GLORE_LIMITS__MAX_BODY_BYTES": str(MAX_BODY),
    "GLORE_LIMITS__MAX_QUESTION_CHARS": str(MAX_QUESTION),
    "GLORE_LIMITS__MAX_NEW_TOKENS": "96",
    "GLORE_LIMITS__MAX_N": "4",
    "GLORE_DEFAULTS__MAX_NEW_TOKENS": "64",
}
STRATEGIES = ["glore", "greedy", "best_of_n", "global_only", "local_only"]  # ORM-reranked


@pytest.fixture(scope="module")
def server(tiny_checkpoints: TinyCheckpoints) -> Iterator[ServerHandle]:
    with start_server(tiny_checkpoints.run_dir, env=ENV) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def question() -> str:
    return tiny_problems(1, seed=11)[0].question


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert error["code"] == code and error["message"]
    assert re.fullmatch(r"[0-9a-f]{32}", error["request_id"])
    assert error["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return dict(error)


# ---------------------------------------------------------------- /solve, every strategy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_solve_answers_in_every_strategy(
    client: httpx.Client, question: str, strategy: str
) -> None:
    r = client.post(
        "/solve",
        json={"question": question, "strategy": strategy, "n": 3, "seed": 1, "include_trace": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == strategy
    labels = [c["label"] for c in body["candidates"]]
    assert body["winner"] in labels
    winner = body["candidates"][labels.index(body["winner"])]
    # the winner is the ORM's best, and its text is the solution returned
    assert winner["orm_score"] == max(c["orm_score"] for c in body["candidates"])
    assert winner["text"] == body["solution"] == "\n".join(body["steps"])
    assert body["answer"] == extract_answer(body["solution"])
    assert all(0.0 <= c["orm_score"] <= 1.0 for c in body["candidates"])
    assert all(c["text"] is not None for c in body["candidates"])
    assert body["usage"]["completion_tokens"] == sum(c["num_tokens"] for c in body["candidates"])
    assert body["timings"]["total"] > 0
    if strategy == "best_of_n":
        assert labels == ["sample_1", "sample_2", "sample_3"]
    else:
        assert labels[0] == "draft"


def test_self_consistency_answers_with_the_most_voted_sample(
    client: httpx.Client, question: str
) -> None:
    body = client.post(
        "/solve", json={"question": question, "strategy": "self_consistency", "n": 3, "seed": 1}
    ).json()
    assert [c["label"] for c in body["candidates"]] == ["sample_1", "sample_2", "sample_3"]
    answers = [c["answer"] for c in body["candidates"] if c["answer"] is not None]
    assert body["votes"] == {a: answers.count(a) for a in dict.fromkeys(answers)}
    if answers:
        assert body["votes"][body["answer"]] == max(body["votes"].values())
    assert body["usage"]["by_role"] == {"policy": body["usage"]["completion_tokens"]}


def test_glore_with_refine_always_flags_a_step_and_refines_globally_and_locally(
    client: httpx.Client, question: str
) -> None:
    knobs = {"refine": "always", "sorm_threshold": 0.9, "local_when_unflagged": "lowest"}
    r = client.post("/solve", json={"question": question, **knobs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["label"] for c in body["candidates"]] == ["draft", "global", "local"]
    scores = body["sorm_step_scores"]
    assert len(scores) == body["candidates"][0]["num_steps"]
    below = [i for i, p in enumerate(scores) if p < 0.9]
    assert body["first_flagged_step"] == (below[0] if below else None)
    decision = body["decision"]
    assert decision["action"] == "refine" and decision["reason"] == "refine_always"
    expected_target = below[0] if below else scores.index(min(scores))
    assert decision["local_target_step"] == expected_target
    assert {"draft", "score", "decide", "refine", "rerank"} <= set(body["timings"])
    assert set(body["usage"]["by_role"]) <= {"policy", "refine_global", "refine_local"}


def test_refine_auto_keeps_the_draft_when_the_orm_threshold_is_zero(
    client: httpx.Client, question: str
) -> None:
    body = client.post("/solve", json={"question": question, "orm_threshold": 0.0}).json()
    assert body["decision"]["action"] == "keep"
    assert body["winner"] == "draft" and len(body["candidates"]) == 1


# ---------------------------------------------------------------- OpenAI-compatible chat


def test_the_openai_client_gets_a_chat_completion(server: ServerHandle, question: str) -> None:
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    models = oai.models.list()
    assert [m.id for m in models.data] == ["glore"]
    completion = oai.chat.completions.create(
        model="glore",
        messages=[
            {"role": "system", "content": "Solve step by step."},
            {"role": "user", "content": question},
        ],
        max_tokens=64,
        extra_body={"strategy": "best_of_n", "num_samples": 2, "seed": 3},
    )
    assert completion.object == "chat.completion"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    glore = (completion.model_extra or {})["glore"]
    assert choice.message.content == glore["solution"]
    assert glore["strategy"] == "best_of_n" and len(glore["candidates"]) == 2
    assert completion.usage is not None
    assert completion.usage.completion_tokens == glore["usage"]["completion_tokens"]


def test_the_openai_client_streams_a_chat_completion(server: ServerHandle, question: str) -> None:
    oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    stream = oai.chat.completions.create(
        model="glore",
        messages=[{"role": "user", "content": question}],
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"strategy": "best_of_n", "num_samples": 2, "seed": 3},
    )
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason in ("stop", "length")
    glore = (finished[0].model_extra or {})["glore"]
    assert content == glore["solution"] and glore["strategy"] == "best_of_n"
    assert content.count("\n") + 1 == len(glore["steps"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == glore["usage"]["completion_tokens"]
    # The same request unstreamed gives the same answer (seeded).
    plain = oai.chat.completions.create(
        model="glore",
        messages=[{"role": "user", "content": question}],
        max_tokens=64,
        extra_body={"strategy": "best_of_n", "num_samples": 2, "seed": 3},
    )
    assert plain.choices[0].message.content == content


def test_the_openai_client_sees_auth_and_validation_errors(server: ServerHandle) -> None:
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad.chat.completions.create(model="glore", messages=[{"role": "user", "content": "2+2?"}])
    assert auth.value.status_code == 401
    assert isinstance(auth.value.body, dict) and auth.value.body["code"] == "unauthorized"
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        good.chat.completions.create(
            model="glore", messages=[{"role": "user", "content": "2+2?"}], n=2
        )
    assert isinstance(invalid.value.body, dict) and "n" in invalid.value.body["message"]


# ---------------------------------------------------------------- every error status


def test_401_without_a_valid_key_on_every_route_but_the_probes(
    server: ServerHandle, question: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        assert anon.get("/health").status_code == 200
        assert anon.get("/ready").status_code == 200
        for path in ["/solve", "/v1/chat/completions"]:
            assert_error(anon.post(path, json={"question": question}), 401, "unauthorized")
        assert_error(anon.get("/metrics"), 401, "unauthorized")
        r = anon.post("/solve", json={"question": question}, headers={"Authorization": "Bearer x"})
        error = assert_error(r, 401, "unauthorized")
    # the request id of the failure is in the server's JSON log
    wait_until(lambda: error["request_id"] in server.logs(), what="the request id in the logs")
    line = next(s for s in server.logs().splitlines() if error["request_id"] in s)
    assert json.loads(line)["status"] == 401


def test_413_for_a_body_over_the_limit(client: httpx.Client) -> None:
    r = client.post("/solve", json={"question": "x" * (MAX_BODY + 10)})
    error = assert_error(r, 413, "payload_too_large")
    assert str(MAX_BODY) in error["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"question": "How many? " * 70}, "question"),  # over max_question_chars
        ({"question": "q", "max_new_tokens": 97}, "max_new_tokens"),
        ({"question": "q", "strategy": "best_of_n", "n": 5}, "n"),
        ({"question": "q", "strategy": "beam_search"}, "strategy"),
        ({"question": "q", "sorm_threshold": 2}, "sorm_threshold"),
        ({"question": ""}, "question"),
    ],
)
def test_422_names_the_offending_field(
    client: httpx.Client, payload: dict[str, Any], field: str
) -> None:
    error = assert_error(client.post("/solve", json=payload), 422, "validation_error")
    assert field in error["message"]
    assert any(field in map(str, d["loc"]) for d in error["details"])


def test_429_with_retry_after_when_every_slot_is_taken_and_there_is_no_queue(
    server: ServerHandle, client: httpx.Client, question: str
) -> None:
    assert client.post("/debug/engines/policy/hold").status_code == 200
    try:
        with (
            cf.ThreadPoolExecutor(1) as pool,
            httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as other,
        ):
            body = {"question": question, "strategy": "greedy"}
            held = pool.submit(other.post, "/solve", json=body)
            wait_until(lambda: in_flight(client) == 1, what="the held request to be admitted")
            r = client.post("/solve", json={"question": question})
            assert_error(r, 429, "overloaded")
            assert r.headers["retry-after"] == "2"
            assert client.post("/debug/engines/policy/release").status_code == 200
            assert held.result().status_code == 200 and held.result().json()["strategy"] == "greedy"
    finally:
        client.post("/debug/engines/policy/release")
    wait_until(lambda: in_flight(client) == 0, what="the slot to be released")
    assert client.post("/solve", json={"question": question}).status_code == 200


def test_a_client_that_stalls_its_body_holds_no_slot(
    server: ServerHandle, client: httpx.Client, question: str
) -> None:
    stalled = RawRequest(server.url, "/solve", {"question": question}, AUTH, hold_body=True)
    time.sleep(0.3)
    # One slot, no queue: under the old admission the stalled client held it (429 here).
    assert client.post("/solve", json={"question": question}).status_code == 200
    status, body = stalled.finish()
    assert status == 200 and body["answer"] == extract_answer(body["solution"])


def test_400_for_a_body_that_is_not_json(client: httpx.Client) -> None:
    r = client.post("/solve", content=b"{oops", headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(r, 400, "bad_request")["message"]


def test_504_when_the_solve_outlasts_its_time_limit(client: httpx.Client, question: str) -> None:
    r = client.post("/solve", json={"question": question, "timeout_s": 0.001})
    error = assert_error(r, 504, "timeout")
    assert "0.001" in error["message"]
    # the server is fine afterwards
    assert client.post("/solve", json={"question": question}).status_code == 200


def test_metrics_after_traffic(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    for needle in [
        'glore_stage_duration_seconds_count{stage="draft",strategy="glore"}',
        'glore_winner_total{kind="sample",strategy="best_of_n"}',
        'glore_refine_decisions_total{decision="refine",reason="refine_always",strategy="glore"}',
        'glore_generated_tokens_total{role="refine_local"}',
        'glore_errors_total{type="overloaded"} 1.0',
        'glore_errors_total{type="timeout"} 1.0',
        'glore_engine_ready{role="sorm"} 1.0',
    ]:
        assert needle in text, needle


def test_metrics_say_what_each_engine_took_to_load(client: httpx.Client) -> None:
    """The cold start's model part, per engine: each loaded engine once, named by the roles it
    serves, so the roles split among them and each engine's seconds fit in the models' total
    (transformers engines load one after another: their sum does too)."""
    text = client.get("/metrics").text
    engines = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^glore_engine_load_seconds\{engine="([^"]+)"\} (\S+)$', text, re.M)
    }
    (total,) = [float(v) for v in re.findall(r"^glore_models_load_seconds (\S+)$", text, re.M)]
    roles = [r for name in engines for r in name.split("+")]
    assert sorted(roles) == sorted(r.value for r in Role)
    assert all(0 < v <= total for v in engines.values())
    assert sum(engines.values()) <= total


def test_503_until_loaded_when_a_checkpoint_is_broken(tmp_path: Path) -> None:
    run = tmp_path / "broken-run"
    for role in ["policy", "orm", "sorm", "refine_global", "refine_local"]:
        (run / role).mkdir(parents=True)
        (run / role / "config.json").write_text("{}")
    with (
        start_server(run, env={"OMP_NUM_THREADS": "1"}, wait="/health") as broken,
        httpx.Client(base_url=broken.url, timeout=30) as c,
    ):
        error = assert_error(c.get("/ready"), 503, "not_ready")
        wait_until(
            lambda: "failed to load" in c.get("/ready").text, timeout=60, what="load failure"
        )
        error = assert_error(c.get("/ready"), 503, "not_ready")
        assert {d["loc"][1] for d in error["details"]} == {
            "policy",
            "orm",
            "sorm",
            "refine_global",
            "refine_local",
        }
        r = c.post("/solve", json={"question": "What is 2 + 2?"})
        assert_error(r, 503, "not_ready")
        assert r.headers["retry-after"] == "1"
        assert c.get("/health").json() == {"status": "ok"}


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(
    tiny_checkpoints: TinyCheckpoints, question: str
) -> None:
    env = {"OMP_NUM_THREADS": "1", "GLORE_DEBUG_FAULTS": "true"}
    server = start_server(tiny_checkpoints.run_dir, env=env)
    try:
        with (
            httpx.Client(base_url=server.url, timeout=60) as c,
            cf.ThreadPoolExecutor(1) as pool,
        ):
            assert c.post("/debug/engines/policy/hold").status_code == 200
            held = pool.submit(c.post, "/solve", json={"question": question})
            wait_until(lambda: in_flight(c) == 1, what="the held request to be admitted")
            server.signal(signal.SIGTERM)
            wait_until(lambda: c.get("/ready").status_code == 503, what="/ready to turn 503")
            assert_error(c.get("/ready"), 503, "shutting_down")
            r = c.post("/solve", json={"question": question})
            assert_error(r, 503, "shutting_down")
            assert "retry-after" in r.headers
            assert server.alive()
            assert c.post("/debug/engines/policy/release").status_code == 200
            # the request that was in flight when the signal came still gets its answer
            done = held.result(timeout=60)
        assert done.status_code == 200
        assert done.json()["answer"] == extract_answer(done.json()["solution"])
        server.wait(timeout=30)
        assert "drained; stopping" in server.logs()
    finally:
        server.stop()


def test_glore_serve_refuses_a_misspelt_setting_naming_the_closest(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    import subprocess
    import sys

    env = {**os.environ, "GLORE_API_KEY": "oops"}
    run = [sys.executable, "-m", "glore", "serve", "--run", str(tiny_checkpoints.run_dir)]
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "GLORE_API_KEY; did you mean GLORE_API_KEYS?" in done.stderr


def test_glore_serve_refuses_a_run_without_checkpoints(tmp_path: Path) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    handle = start_server(empty, wait=None)
    assert handle.wait(timeout=60) == 2
    assert "no checkpoint for policy" in handle.logs()


def test_uvicorn_factory_serves_the_same_app_from_env(
    tiny_checkpoints: TinyCheckpoints, question: str
) -> None:
    """The deploy image may run `uvicorn --factory glore.app:create_app`: settings from env."""
    with (
        start_server(
            tiny_checkpoints.run_dir, env={"OMP_NUM_THREADS": "1"}, uvicorn_factory=True
        ) as handle,
        httpx.Client(base_url=handle.url, timeout=60) as c,
    ):
        r = c.post("/solve", json={"question": question, "strategy": "greedy"})
        assert r.status_code == 200, r.text
        assert r.json()["winner"] == "draft"


def test_glore_serve_trains_a_missing_run_first_and_says_so(tmp_path: Path) -> None:
    """The README's main command: a fresh run directory is trained (smoke preset here, for
    time), then served."""
    run = tmp_path / "fresh-run"
    with start_server(
        run, env={"OMP_NUM_THREADS": "1"}, args=["--train-if-missing", "smoke"], timeout=600
    ) as server:
        logs = server.logs()
        assert "has no trained checkpoints: training the 'smoke' preset first" in logs
        assert "training finished" in logs
        assert (run / "manifest.json").is_file()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/solve", json={"question": "Ana has 7 pens. Ana gets 4 more. How many?"})
            assert r.status_code == 200, r.text
            assert r.json()["strategy"] == "glore"
