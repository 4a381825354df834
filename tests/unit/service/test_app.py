"""The HTTP app on typed fake engines: routes, limits, errors, auth, metrics, readiness."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engines.base import EngineError
from glore.app import create_app
from service.settings import SERVING_FILE, Defaults, Settings
from tests.support.fakes import (
    RIGHT_GLOBAL,
    WRONG_DRAFT,
    FakeEngineSet,
    FakeGenerator,
    constant,
    make_engines,
)

Q = "Tom has 2 apples and buys 3 more bags of 4 apples. How many apples does he have?"
KEY = "test-key-123"


def settings(**overrides: Any) -> Settings:
    return Settings(log_json=True, **overrides)


@pytest.fixture
def engines() -> FakeEngineSet:
    return make_engines()


@pytest.fixture
def client(engines: FakeEngineSet) -> Iterator[TestClient]:
    with TestClient(create_app(settings(), engines)) as c:
        yield c


@asynccontextmanager
async def async_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client whose requests can run concurrently, with the lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            yield c


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return dict(error)


# ---------------------------------------------------------------- /solve


def test_solve_returns_the_answer_the_winner_and_every_candidate_score(client: TestClient) -> None:
    r = client.post("/solve", json={"question": Q})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "glore"
    assert body["answer"] == "20"
    assert body["winner"] == "global"
    assert body["steps"] == RIGHT_GLOBAL.split("\n")
    assert body["solution"] == RIGHT_GLOBAL
    assert body["sorm_step_scores"] == [0.9, 0.1, 0.1]
    assert body["first_flagged_step"] == 1
    assert body["decision"] == {
        "action": "refine",
        "reason": "orm_below_threshold",
        "refine_mode": "auto",
        "orm_threshold": 0.5,
        "sorm_threshold": 0.5,
        "local_when_unflagged": "skip",
        "first_flagged_step": 1,
        "local_target_step": 1,
        "dropped": [],
    }
    assert body["warnings"] == []  # the fake run has no question profile
    assert [(c["label"], c["orm_score"]) for c in body["candidates"]] == [
        ("draft", pytest.approx(0.1)),
        ("global", pytest.approx(0.9)),
        ("local", pytest.approx(0.9)),
    ]
    assert all("text" not in c and "sorm_step_scores" not in c for c in body["candidates"])
    assert {"draft", "score", "decide", "refine", "rerank", "total"} <= set(body["timings"])
    assert body["usage"]["completion_tokens"] == sum(body["usage"]["by_role"].values()) > 0
    assert body["request_id"] == r.headers["x-request-id"]


def test_include_trace_returns_every_candidates_full_text(client: TestClient) -> None:
    body = client.post("/solve", json={"question": Q, "include_trace": True}).json()
    texts = {c["label"]: c["text"] for c in body["candidates"]}
    assert texts["draft"] == WRONG_DRAFT
    assert texts["global"] == RIGHT_GLOBAL
    assert body["candidates"][0]["sorm_step_scores"] == [0.9, 0.1, 0.1]


@pytest.mark.parametrize(
    ("strategy", "winner"),
    [
        ("glore", "global"),
        ("greedy", "draft"),
        ("best_of_n", "sample_1"),
        ("global_only", "global"),
        ("local_only", "local"),
        ("self_consistency", "sample_1"),
    ],
)
def test_every_strategy_answers_over_http(client: TestClient, strategy: str, winner: str) -> None:
    r = client.post("/solve", json={"question": Q, "strategy": strategy, "n": 3})
    assert r.status_code == 200, r.text
    assert r.json()["strategy"] == strategy
    assert r.json()["winner"] == winner


def test_request_knobs_reach_the_models(client: TestClient, engines: FakeEngineSet) -> None:
    r = client.post(
        "/solve",
        json={
            "question": Q,
            "refine": "always",
            "orm_threshold": 0.05,
            "max_new_tokens": 33,
            "temperature": 0.2,
            "seed": 5,
        },
    )
    assert r.json()["decision"]["reason"] == "refine_always"
    [(_, params)] = engines.policy.calls  # type: ignore[attr-defined]
    assert (params.max_new_tokens, params.temperature, params.seed) == (33, 0.2, 5)


def test_self_consistency_reports_its_votes_and_no_orm_score(client: TestClient) -> None:
    r = client.post("/solve", json={"question": Q, "strategy": "self_consistency", "n": 3})
    body = r.json()
    assert body["votes"] == {body["answer"]: 3}
    assert [c["orm_score"] for c in body["candidates"]] == [None, None, None]
    assert body["decision"]["reason"] == "strategy_does_not_refine"
    assert client.post("/solve", json={"question": Q}).json()["votes"] is None


@pytest.mark.parametrize(
    ("when", "reason", "labels", "target"),
    [
        ("skip", "no_step_flagged", ["draft", "global"], None),
        ("lowest", "orm_below_threshold", ["draft", "global", "local"], 1),
    ],
)
def test_local_when_unflagged_decides_the_local_refinement_of_an_unflagged_draft(
    client: TestClient, when: str, reason: str, labels: list[str], target: int | None
) -> None:
    # At threshold 0.05 the SORM (0.9, 0.1, 0.1) flags no step, while the ORM still doubts.
    knobs = {"sorm_threshold": 0.05, "local_when_unflagged": when}
    body = client.post("/solve", json={"question": Q, **knobs}).json()
    assert body["decision"]["reason"] == reason
    assert body["decision"]["local_when_unflagged"] == when
    assert (body["first_flagged_step"], body["decision"]["local_target_step"]) == (None, target)
    assert [c["label"] for c in body["candidates"]] == labels


def test_a_client_request_id_is_echoed_in_the_header_and_the_body(client: TestClient) -> None:
    r = client.post("/solve", json={"question": Q}, headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" == r.json()["request_id"]
    r = client.post("/solve", json={"question": Q}, headers={"X-Request-Id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"question": "x" * 4001}, "question"),
        ({"question": ""}, "question"),
        ({"question": " \u0000 "}, "question"),
        ({"question": Q, "max_new_tokens": 5000}, "max_new_tokens"),
        ({"question": Q, "n": 17, "strategy": "best_of_n"}, "n"),
        ({"question": Q, "strategy": "beam"}, "strategy"),
        ({"question": Q, "orm_threshold": 1.5}, "orm_threshold"),
        ({"question": Q, "temperature": -1}, "temperature"),
        ({"question": Q, "surprise": 1}, "surprise"),
        ({}, "question"),
    ],
)
def test_bad_input_gets_422_naming_the_field(
    client: TestClient, payload: dict[str, Any], field: str
) -> None:
    error = assert_error(client.post("/solve", json=payload), 422, "validation_error")
    assert field in error["message"]
    assert any(field in [str(p) for p in d["loc"]] for d in error["details"])


def test_malformed_json_gets_400_as_the_readme_says(client: TestClient) -> None:
    r = client.post("/solve", content=b"{not json", headers={"content-type": "application/json"})
    error = assert_error(r, 400, "bad_request")
    assert "not valid JSON" in error["message"]


def test_a_body_over_the_limit_gets_413_from_its_content_length(engines: FakeEngineSet) -> None:
    app = create_app(settings(limits={"max_body_bytes": 1024}), engines)
    with TestClient(app) as c:
        r = c.post("/solve", json={"question": "x" * 2000})
        assert_error(r, 413, "payload_too_large")
        assert engines.policy.calls == []  # type: ignore[attr-defined]


def test_a_streamed_body_over_the_limit_gets_413(engines: FakeEngineSet) -> None:
    app = create_app(settings(limits={"max_body_bytes": 1024}), engines)

    def chunks() -> Iterator[bytes]:
        yield b'{"question": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}'

    with TestClient(app) as c:
        r = c.post("/solve", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "payload_too_large")


def test_unknown_routes_and_methods_get_the_error_body(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/solve"), 405, "method_not_allowed")


async def test_requests_beyond_max_in_flight_and_a_full_queue_get_429_with_retry_after() -> None:
    engines = make_engines()
    gate = asyncio.Event()
    engines.policy = FakeGenerator("policy", constant(WRONG_DRAFT), gate=gate)
    limits = {"max_in_flight": 1, "max_queue": 0, "retry_after_s": 3}
    app = create_app(settings(limits=limits), engines)
    async with async_client(app) as c:
        first = asyncio.create_task(c.post("/solve", json={"question": Q}))
        await engines.policy.started.wait()  # type: ignore[attr-defined]
        r = await c.post("/solve", json={"question": Q})
        assert_error(r, 429, "overloaded")
        assert r.headers["retry-after"] == "3"
        # probes are not subject to admission control
        assert (await c.get("/health")).status_code == 200
        gate.set()
        assert (await first).status_code == 200
        assert (await c.post("/solve", json={"question": Q})).status_code == 200


async def test_a_solve_past_its_time_limit_gets_504_and_its_work_is_cancelled() -> None:
    engines = make_engines(policy_delay_s=5)
    app = create_app(settings(), engines)
    async with async_client(app) as c:
        r = await c.post("/solve", json={"question": Q, "timeout_s": 0.05})
        error = assert_error(r, 504, "timeout")
        assert "0.05" in error["message"]
    assert engines.policy.cancelled == 1  # type: ignore[attr-defined]


async def test_the_server_timeout_applies_when_the_request_sets_none() -> None:
    engines = make_engines(policy_delay_s=5)
    app = create_app(settings(limits={"request_timeout_s": 0.05}), engines)
    async with async_client(app) as c:
        r = await c.post("/solve", json={"question": Q, "timeout_s": 100})
        assert_error(r, 504, "timeout")


async def test_a_client_disconnect_cancels_the_solve() -> None:
    engines = make_engines()
    gate = asyncio.Event()
    engines.policy = FakeGenerator("policy", constant(WRONG_DRAFT), gate=gate)
    app = create_app(settings(), engines)
    body = json.dumps({"question": Q}).encode()
    sent: list[dict[str, Any]] = []
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if body_messages:
            return body_messages.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    body_messages = [{"type": "http.request", "body": body, "more_body": False}]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/solve",
        "raw_path": b"/solve",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("app", 80),
        "client": ("test", 1),
        "headers": [(b"content-type", b"application/json")],
    }
    async with app.router.lifespan_context(app):
        call = asyncio.create_task(app(scope, receive, send))
        await engines.policy.started.wait()  # type: ignore[attr-defined]
        disconnect.set()
        await asyncio.wait_for(call, timeout=5)
        metrics = app.state.glore.metrics
        assert metrics.errors.labels(type="client_disconnected")._value.get() == 1
        assert app.state.glore.in_flight == 0
    assert engines.policy.cancelled == 1  # type: ignore[attr-defined]
    assert engines.refine_global.calls == []  # type: ignore[attr-defined]


def test_an_unexpected_error_is_a_500_without_a_traceback(
    engines: FakeEngineSet, capfd: pytest.CaptureFixture[str]
) -> None:
    def boom(prompt: str, index: int) -> str:
        raise RuntimeError("secret internal detail")

    engines.policy = FakeGenerator("policy", boom)
    with TestClient(create_app(settings(), engines), raise_server_exceptions=False) as c:
        r = c.post("/solve", json={"question": Q})
    error = assert_error(r, 500, "internal_error")
    assert "secret" not in r.text
    logs = capfd.readouterr().err
    line = next(json.loads(s) for s in logs.splitlines() if "solve failed" in s)
    assert line["request_id"] == error["request_id"]
    assert "secret internal detail" in line["exc"]


def test_an_engine_failure_is_a_500_naming_the_role(engines: FakeEngineSet) -> None:
    def dead(prompt: str, index: int) -> str:
        raise EngineError("worker died", role="policy", path="/models/p")

    engines.policy = FakeGenerator("policy", dead)
    with TestClient(create_app(settings(), engines)) as c:
        error = assert_error(c.post("/solve", json={"question": Q}), 500, "engine_error")
    assert "policy" in error["message"] and "/models/p" not in error["message"]


# ---------------------------------------------------------------- readiness and shutdown


def test_health_is_live_and_ready_lists_every_role(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200
    assert set(r.json()["roles"]) == {"policy", "orm", "sorm", "refine_global", "refine_local"}


def test_ready_is_503_naming_a_dead_engine_and_solves_are_refused(engines: FakeEngineSet) -> None:
    engines.sorm.healthy = False  # type: ignore[attr-defined]
    with TestClient(create_app(settings(), engines)) as c:
        error = assert_error(c.get("/ready"), 503, "not_ready")
        assert error["details"] == [{"loc": ["roles", "sorm"], "msg": "fake engine marked dead"}]
        assert_error(c.post("/solve", json={"question": Q}), 503, "not_ready")
        assert 'glore_engine_ready{role="sorm"} 0.0' in c.get("/metrics").text


def test_ready_is_503_while_the_models_load(tmp_path: Any) -> None:
    # Nothing at these paths: loading fails, and readiness says so with the loader's message.
    app = create_app(settings(run_dir=tmp_path / "missing-run"))
    with TestClient(app) as c:
        for _ in range(200):
            if app.state.glore.load_error:
                break
            assert_error(c.get("/ready"), 503, "not_ready")
            time.sleep(0.05)
        error = assert_error(c.get("/ready"), 503, "not_ready")
        assert "failed to load" in error["message"]
        assert c.get("/health").status_code == 200


def test_draining_turns_ready_503_and_refuses_new_solves(client: TestClient) -> None:
    client.app.state.glore.draining = True  # type: ignore[attr-defined]
    assert_error(client.get("/ready"), 503, "shutting_down")
    r = client.post("/solve", json={"question": Q})
    assert_error(r, 503, "shutting_down")
    assert r.headers["retry-after"] == "1"


# ---------------------------------------------------------------- auth


def test_api_keys_guard_every_route_but_the_probes(engines: FakeEngineSet) -> None:
    app = create_app(settings(api_keys=[KEY, "other"]), engines)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 200
        for method, path in [("POST", "/solve"), ("GET", "/metrics"), ("GET", "/openapi.json")]:
            r = c.request(method, path, json={"question": Q})
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        text = c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert (
            'glore_request_duration_seconds_count{method="POST",route="/solve",status="401"}'
            in text
        )
        bad = {"Authorization": "Bearer wrong"}
        assert_error(c.post("/solve", json={"question": Q}, headers=bad), 401, "unauthorized")
        good = {"Authorization": f"Bearer {KEY}"}
        assert c.post("/solve", json={"question": Q}, headers=good).status_code == 200
        assert c.get("/metrics", headers={"Authorization": "bearer other"}).status_code == 200


def test_settings_read_api_keys_from_a_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLORE_API_KEYS", f"{KEY}, other")
    monkeypatch.setenv("GLORE_LIMITS__MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("GLORE_SORM__BACKEND", "vllm")
    monkeypatch.setenv("GLORE_SORM__OPTIONS", '{"dtype": "bfloat16"}')
    monkeypatch.setenv("GLORE_RUN_DIR", "/runs/tiny")
    s = Settings()
    assert [k.get_secret_value() for k in s.api_keys] == [KEY, "other"]
    assert s.limits.max_in_flight == 3
    specs = s.engine_specs()
    assert specs["sorm"].backend == "vllm" and specs["sorm"].options == {"dtype": "bfloat16"}
    assert specs["policy"].path == "/runs/tiny/policy"


def test_the_run_s_evaluation_chosen_thresholds_are_the_defaults_unless_settings_set_them(
    engines: FakeEngineSet, tmp_path: Path
) -> None:
    (tmp_path / SERVING_FILE).write_text(json.dumps({"sorm_threshold": 0.05, "orm_threshold": 0.3}))
    chosen = settings(run_dir=tmp_path, defaults=Defaults(orm_threshold=0.6))
    with TestClient(create_app(chosen, engines)) as c:
        assert c.get("/ready").json()["defaults"] == {
            "sorm_threshold": {"value": 0.05, "source": "run"},
            "orm_threshold": {"value": 0.6, "source": "settings"},
        }
        decision = c.post("/solve", json={"question": Q}).json()["decision"]
        assert (decision["sorm_threshold"], decision["orm_threshold"]) == (0.05, 0.6)
        assert decision["reason"] == "no_step_flagged"  # 0.05 flags none of (0.9, 0.1, 0.1)
    with TestClient(create_app(settings(), engines)) as c:
        assert c.get("/ready").json()["defaults"]["sorm_threshold"] == {
            "value": 0.5,
            "source": "built-in",
        }


def test_environment_thresholds_override_the_run_s(
    engines: FakeEngineSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / SERVING_FILE).write_text(json.dumps({"sorm_threshold": 0.2, "orm_threshold": 0.3}))
    monkeypatch.setenv("GLORE_DEFAULTS__SORM_THRESHOLD", "0.7")
    with TestClient(create_app(settings(run_dir=tmp_path), engines)) as c:
        assert c.get("/ready").json()["defaults"] == {
            "sorm_threshold": {"value": 0.7, "source": "settings"},
            "orm_threshold": {"value": 0.3, "source": "run"},
        }


def test_a_broken_serving_file_fails_the_app_naming_the_file(
    engines: FakeEngineSet, tmp_path: Path
) -> None:
    (tmp_path / SERVING_FILE).write_text(json.dumps({"sorm_threshold": 7}))
    with pytest.raises(ValueError, match=r"serving\.json"):
        create_app(settings(run_dir=tmp_path), engines)


def test_an_app_without_checkpoints_fails_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="GLORE_RUN_DIR"):
        create_app(Settings())


# ---------------------------------------------------------------- chat, metrics, docs


def test_chat_completions_answers_the_last_user_message(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "glore",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "ignored earlier question"},
                {"role": "user", "content": [{"type": "text", "text": Q}]},
            ],
            "max_tokens": 40,
            "strategy": "greedy",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": WRONG_DRAFT}
    assert body["glore"]["strategy"] == "greedy"
    assert body["usage"]["completion_tokens"] == body["glore"]["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"n": 2}, "n"),
        ({"max_tokens": 99999}, "max_tokens"),
        ({"num_samples": 999, "strategy": "best_of_n"}, "num_samples"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "messages"),
        ({"messages": []}, "messages"),
    ],
)
def test_chat_completions_rejects_what_it_cannot_do_naming_the_field(
    client: TestClient, extra: dict[str, Any], field: str
) -> None:
    payload = {"messages": [{"role": "user", "content": Q}], **extra}
    error = assert_error(client.post("/v1/chat/completions", json=payload), 422, "validation_error")
    assert field in error["message"]


def test_metrics_count_stages_decisions_winners_tokens_and_errors(client: TestClient) -> None:
    client.post("/solve", json={"question": Q})
    client.post("/solve", json={"question": ""})
    text = client.get("/metrics").text
    for needle in [
        'glore_stage_duration_seconds_count{stage="draft",strategy="glore"} 1.0',
        'glore_stage_duration_seconds_count{stage="refine",strategy="glore"} 1.0',
        'glore_refine_decisions_total{decision="refine",reason="orm_below_threshold",'
        'strategy="glore"} 1.0',
        'glore_winner_total{kind="global",strategy="glore"} 1.0',
        'glore_generated_tokens_total{role="policy"}',
        'glore_errors_total{type="validation_error"} 1.0',
        'glore_request_duration_seconds_count{method="POST",route="/solve",status="200"} 1.0',
        'glore_request_duration_seconds_count{method="POST",route="/solve",status="422"} 1.0',
        'glore_engine_ready{role="policy"} 1.0',
        "glore_in_flight_requests 0.0",
    ]:
        assert needle in text, needle


def test_openapi_documents_every_route_with_examples_and_error_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ["/solve", "/v1/chat/completions", "/health", "/ready", "/metrics", "/v1/models"]:
        assert path in paths
    solve = paths["/solve"]["post"]
    for status in ["401", "413", "422", "429", "503", "504"]:
        assert status in solve["responses"], status
    schemas = spec["components"]["schemas"]
    assert schemas["SolveRequest"]["examples"]
    assert schemas["SolveResponse"]["examples"]
    assert schemas["ErrorBody"]["examples"]
    assert schemas["SolveRequest"]["properties"]["strategy"]["anyOf"]


def test_openapi_declares_bearer_auth_when_keys_are_set(engines: FakeEngineSet) -> None:
    with TestClient(create_app(settings(api_keys=[KEY]), engines)) as c:
        spec = c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/solve"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_access_logs_are_json_with_the_request_id(
    engines: FakeEngineSet, capfd: pytest.CaptureFixture[str]
) -> None:
    with TestClient(create_app(settings(), engines)) as client:
        r = client.post("/solve", json={"question": Q}, headers={"X-Request-Id": "log-me"})
    assert r.status_code == 200
    lines: list[dict[str, Any]] = []
    for _ in range(100):  # the access line is written just after the response is sent
        err = capfd.readouterr().err
        lines += [json.loads(s) for s in err.splitlines() if s.startswith("{")]
        access = [x for x in lines if x.get("path") == "/solve"]
        if access:
            break
        time.sleep(0.02)
    assert access and access[-1]["request_id"] == "log-me" and access[-1]["status"] == 200
    solved = [x for x in lines if x["message"] == "solved"]
    assert solved[-1]["request_id"] == "log-me" and solved[-1]["winner"] == "global"
    assert all(Q not in json.dumps(x) for x in lines)  # question text only at DEBUG


async def test_a_solve_admitted_before_draining_still_finishes() -> None:
    engines = make_engines()
    gate = asyncio.Event()
    engines.policy = FakeGenerator("policy", constant(WRONG_DRAFT), gate=gate)
    app = create_app(settings(), engines)
    async with async_client(app) as c:
        first = asyncio.create_task(c.post("/solve", json={"question": Q}))
        await engines.policy.started.wait()  # type: ignore[attr-defined]
        app.state.glore.draining = True
        assert_error(await c.post("/solve", json={"question": Q}), 503, "shutting_down")
        assert not app.state.glore.idle.is_set()
        gate.set()
        assert (await first).status_code == 200
        assert app.state.glore.idle.is_set()
