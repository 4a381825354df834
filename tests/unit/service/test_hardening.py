"""Production hardening on typed fake engines: typed input errors, admission that queues, secure
defaults, one shutdown timeline, the status table of docs/service.md and streamed chat
completions."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from engines.base import MAX_SEED, InputError
from glore.app import create_app
from service.admission import Admission
from service.metrics import Metrics
from service.settings import Defaults, Limits, Settings, unknown_env
from tests.support.fakes import WRONG_DRAFT, FakeEngineSet, FakeGenerator, constant, make_engines
from tests.unit.service.test_app import KEY, Q, assert_error, async_client, settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def engines() -> FakeEngineSet:
    return make_engines()


def raising(exc: Exception) -> FakeGenerator:
    def respond(prompt: str, index: int) -> str:
        raise exc

    return FakeGenerator("policy", respond)


def scope(path: str = "/solve", body_length: int = 20) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("app", 80),
        "client": ("test", 1),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(body_length).encode()),
        ],
    }


# ---------------------------------------------------------------- errors a row can cause


def test_a_seed_beyond_the_engines_range_is_a_422_naming_seed(engines: FakeEngineSet) -> None:
    with TestClient(create_app(settings(), engines)) as c:
        for seed in (MAX_SEED + 1, -1):
            r = c.post("/solve", json={"question": Q, "strategy": "best_of_n", "seed": seed})
            error = assert_error(r, 422, "validation_error")
            assert error["message"].startswith("seed")
        ok = {"question": Q, "strategy": "best_of_n", "seed": MAX_SEED, "n": 2}
        assert c.post("/solve", json=ok).status_code == 200


def test_an_input_error_from_a_model_is_a_422_naming_the_field(engines: FakeEngineSet) -> None:
    engines.policy = raising(InputError("prompts: a prompt has 900 tokens, the model takes 512"))
    with TestClient(create_app(settings(), engines)) as c:
        error = assert_error(c.post("/solve", json={"question": Q}), 422, "validation_error")
        assert error["message"].startswith("question:") and "900 tokens" in error["message"]
        chat = {"messages": [{"role": "user", "content": Q}]}
        error = assert_error(c.post("/v1/chat/completions", json=chat), 422, "validation_error")
        assert error["details"][0]["loc"] == ["body", "messages", 0, "content"]


def test_any_other_value_error_from_a_model_is_a_generic_500(engines: FakeEngineSet) -> None:
    engines.policy = raising(ValueError("Overflow when unpacking long long"))
    with TestClient(create_app(settings(), engines)) as c:
        r = c.post("/solve", json={"question": Q})
        error = assert_error(r, 500, "internal_error")
        assert "Overflow" not in r.text and error["request_id"] in error["message"]
        text = c.get("/metrics").text
    assert 'glore_errors_total{type="internal_error"} 1.0' in text


# ---------------------------------------------------------------- admission


async def test_a_request_beyond_max_in_flight_waits_in_line_and_is_served() -> None:
    engines = make_engines()
    gate = asyncio.Event()
    engines.policy = FakeGenerator("policy", constant(WRONG_DRAFT), gate=gate)
    app = create_app(settings(limits={"max_in_flight": 1}), engines)
    metrics = app.state.glore.metrics
    async with async_client(app) as c:
        first = asyncio.create_task(c.post("/solve", json={"question": Q}))
        await engines.policy.started.wait()  # type: ignore[attr-defined]
        second = asyncio.create_task(c.post("/solve", json={"question": Q}))
        for _ in range(100):
            if metrics.queue_length._value.get() == 1:
                break
            await asyncio.sleep(0.01)
        assert metrics.queue_length._value.get() == 1
        assert app.state.glore.admission.used == 1
        gate.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        text = (await c.get("/metrics")).text
    assert "glore_queue_length 0.0" in text
    assert "glore_queue_wait_seconds_count 1.0" in text


async def test_a_wait_longer_than_the_time_limit_is_refused_with_the_expected_wait() -> None:
    engines = make_engines()
    gate = asyncio.Event()
    engines.policy = FakeGenerator("policy", constant(WRONG_DRAFT), gate=gate)
    app = create_app(settings(limits={"max_in_flight": 1, "request_timeout_s": 5}), engines)
    admission = app.state.glore.admission
    async with async_client(app) as c:
        first = asyncio.create_task(c.post("/solve", json={"question": Q}))
        await engines.policy.started.wait()  # type: ignore[attr-defined]
        admission.service_s = 30.0  # as measured on a slow model: one solve takes 30 s
        r = await c.post("/solve", json={"question": Q})
        error = assert_error(r, 429, "overloaded")
        assert "expected wait" in error["message"]
        assert int(r.headers["retry-after"]) >= 30
        gate.set()
        assert (await first).status_code == 200


async def test_a_stalled_body_holds_no_slot_and_gets_408() -> None:
    app = create_app(
        settings(limits={"max_in_flight": 1, "max_queue": 0, "body_timeout_s": 0.2}),
        make_engines(),
    )
    sent: list[dict[str, Any]] = []

    async def never() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with async_client(app) as c:
        stalled = asyncio.create_task(app(scope(), never, send))
        await asyncio.sleep(0.05)
        # The stalled client holds nothing: a whole request gets the only slot meanwhile.
        assert (await c.post("/solve", json={"question": Q})).status_code == 200
        await asyncio.wait_for(stalled, 5)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408
    body = json.loads(b"".join(m.get("body", b"") for m in sent if "body" in m))
    assert body["error"]["code"] == "request_timeout"


def test_a_request_weighs_its_samples_times_its_tokens() -> None:
    limits, defaults = Limits(), Defaults()
    admission = Admission(limits, defaults, Metrics())
    weigh = lambda body: admission.weight(json.dumps(body).encode())  # noqa: E731
    assert weigh({"question": Q}) == 1
    assert weigh({"question": Q, "strategy": "greedy", "n": 16}) == 1  # n only counts to sample
    assert weigh({"question": Q, "strategy": "best_of_n", "n": 4, "max_new_tokens": 256}) == 4
    heavy = {"question": Q, "strategy": "best_of_n", "n": 16, "max_new_tokens": 1024}
    assert weigh(heavy) == limits.max_in_flight  # at most the whole pool
    chat = {"strategy": "self_consistency", "num_samples": 2, "max_tokens": 512}
    assert weigh(chat) == 4
    assert admission.weight(b"{not json") == 1
    assert admission.weight(b"[" * 20_000 + b"]" * 20_000) == 1  # a nesting bomb
    # Whatever shape the fields have (the app refuses them after): schemathesis sent these.
    for odd in ({"strategy": ["best_of_n"]}, {"n": {"a": 1}, "max_new_tokens": [3]}, [1], "x"):
        assert weigh(odd) == 1
    flat = Admission(Limits(weigh_by_cost=False), defaults, Metrics())
    assert flat.weight(json.dumps(heavy).encode()) == 1


# ---------------------------------------------------------------- secure by default


def test_an_unknown_glore_variable_fails_startup_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, engines: FakeEngineSet
) -> None:
    monkeypatch.setenv("GLORE_API_KEY", "secret")
    with pytest.raises(ValueError, match="GLORE_API_KEY; did you mean GLORE_API_KEYS"):
        create_app(settings(), engines)
    assert unknown_env({"GLORE_LIMITS__MAX_INFLIGHT": "3"}) == [
        "unknown setting GLORE_LIMITS__MAX_INFLIGHT; did you mean GLORE_LIMITS__MAX_IN_FLIGHT?"
    ]
    # Every setting, nested ones and a role's option keys are known.
    assert unknown_env({"GLORE_LIMITS__MAX_QUEUE": "1", "GLORE_POLICY__OPTIONS__DTYPE": "x"}) == []


@pytest.mark.parametrize(
    ("host", "keys", "insecure"),
    [
        ("0.0.0.0", [], True),
        ("0.0.0.0", [KEY], False),
        ("127.0.0.1", [], False),
        ("::1", [], False),
    ],
)
def test_listening_beyond_loopback_without_keys_is_flagged(
    engines: FakeEngineSet, host: str, keys: list[str], insecure: bool
) -> None:
    app = create_app(settings(host=host, api_keys=keys), engines)
    auth = {"Authorization": f"Bearer {KEY}"} if keys else {}
    with TestClient(app) as c:
        warnings = c.get("/ready").json()["warnings"]
        text = c.get("/metrics", headers=auth).text
    assert any("without API keys" in w for w in warnings) == insecure
    assert f"glore_insecure {1.0 if insecure else 0.0}" in text


def test_the_debug_routes_are_absent_unless_enabled(engines: FakeEngineSet) -> None:
    with TestClient(create_app(settings(), engines)) as c:
        for action in ("kill", "hold", "release"):
            assert_error(c.post(f"/debug/engines/policy/{action}"), 404, "not_found")
    with TestClient(create_app(settings(debug_faults=True), make_engines())) as c:
        assert c.post("/debug/engines/policy/hold").json() == {"roles": ["policy"]}
        assert c.post("/debug/engines/policy/release").status_code == 200
        assert "GLORE_DEBUG_FAULTS" in " ".join(c.get("/ready").json()["warnings"])


def test_docs_openapi_and_metrics_need_a_key_when_keys_are_set(engines: FakeEngineSet) -> None:
    with TestClient(create_app(settings(api_keys=[KEY]), engines)) as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/v1/models"):
            assert_error(c.get(path), 401, "unauthorized")
            assert c.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# ---------------------------------------------------------------- one timeline for shutdown


def test_request_timeout_is_below_the_drain_which_is_below_the_container_stop_grace() -> None:
    defaults = Settings()
    request, drain = defaults.limits.request_timeout_s, defaults.shutdown_timeout_s
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    service = compose["x-glore"]
    grace = float(service["stop_grace_period"].rstrip("s"))
    compose_drain = float(service["environment"].get("GLORE_SHUTDOWN_TIMEOUT_S", drain))
    compose_request = float(service["environment"].get("GLORE_LIMITS__REQUEST_TIMEOUT_S", request))
    assert compose_request < compose_drain < grace
    assert request < drain < grace
    dockerfile = (ROOT / "Dockerfile").read_text()
    # every runtime target (cpu, gpu, orchestrator): the signal that drains
    assert dockerfile.count("STOPSIGNAL SIGTERM") == 3
    # nginx waits for an answer longer than the service's own limit, so the 504 is ours.
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    read_timeout = re.search(r"proxy_read_timeout (\d+)s", nginx)
    assert read_timeout is not None and float(read_timeout.group(1)) > compose_request
    # The service page's table says the same.
    page = (ROOT / "docs" / "service.md").read_text()
    assert f"| `GLORE_LIMITS__REQUEST_TIMEOUT_S` | {request:g} s |" in page
    assert f"| `GLORE_SHUTDOWN_TIMEOUT_S` | {drain:g} s |" in page
    assert f"| compose `stop_grace_period` | {grace:g} s |" in page


# ---------------------------------------------------------------- the documented status table


async def test_every_row_of_the_service_page_status_table_is_what_the_server_answers() -> None:
    page = (ROOT / "docs" / "service.md").read_text()
    section = page[page.index("| status | when |") :].split("\n\n")[0]
    documented = {int(m) for m in re.findall(r"^\| (\d{3}) \|", section, re.MULTILINE)}

    async def status_of(
        body: Any = None,
        *,
        limits: dict[str, Any] | None = None,
        keys: list[str] | None = None,
        policy: FakeGenerator | None = None,
        draining: bool = False,
        raw: bytes | None = None,
        hold: bool = False,
    ) -> int:
        engines = make_engines()
        gate = asyncio.Event()
        if policy is not None:
            engines.policy = policy
        if hold:
            engines.policy = FakeGenerator("policy", constant(WRONG_DRAFT), gate=gate)
        app = create_app(settings(limits=limits or {}, api_keys=keys or []), engines)
        app.state.glore.draining = draining
        async with async_client(app) as c:
            held = None
            if hold:
                held = asyncio.create_task(c.post("/solve", json={"question": Q}))
                await engines.policy.started.wait()  # type: ignore[attr-defined]
            if raw is not None:
                r = await c.post(
                    "/solve", content=raw, headers={"content-type": "application/json"}
                )
            else:
                r = await c.post("/solve", json=body)
            gate.set()
            if held is not None:
                await held
        assert "Traceback" not in r.text and r.json()["error"]["request_id"]
        return r.status_code

    async def body_timeout() -> int:
        app = create_app(settings(limits={"body_timeout_s": 0.05}), make_engines())
        sent: list[dict[str, Any]] = []

        async def never() -> dict[str, Any]:
            await asyncio.sleep(3600)
            return {}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async with app.router.lifespan_context(app):
            await app(scope(), never, send)
        return int(sent[0]["status"])

    answers = {
        400: await status_of(raw=b"{not json"),
        401: await status_of({"question": Q}, keys=[KEY]),
        408: await body_timeout(),
        413: await status_of({"question": "x" * 2000}, limits={"max_body_bytes": 1024}),
        422: await status_of({"question": Q, "n": 0}),
        429: await status_of(
            {"question": Q}, limits={"max_in_flight": 1, "max_queue": 0}, hold=True
        ),
        500: await status_of({"question": Q}, policy=raising(RuntimeError("bug"))),
        503: await status_of({"question": Q}, draining=True),
        504: await status_of({"question": Q, "timeout_s": 0.01}, hold=True),
    }
    assert documented == set(answers)
    assert answers == {status: status for status in answers}


# ---------------------------------------------------------------- streaming


def sse(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_stream_true_answers_with_openai_chunks_then_done(engines: FakeEngineSet) -> None:
    chat = {"messages": [{"role": "user", "content": Q}], "stream": True}
    with TestClient(create_app(settings(), engines)) as c:
        r = c.post("/v1/chat/completions", json=chat)
        plain = c.post("/v1/chat/completions", json={**chat, "stream": False}).json()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = sse(r.text)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == plain["choices"][0]["message"]["content"]
    assert len(chunks) >= 4  # role, a delta per step, the finish
    finals = [c for c in chunks if c["choices"][0]["finish_reason"] is not None]
    assert finals == [chunks[-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["glore"]["solution"] == content
    assert all("usage" not in c for c in chunks)


def test_include_usage_adds_a_usage_chunk_and_nulls_the_others(engines: FakeEngineSet) -> None:
    chat = {
        "messages": [{"role": "user", "content": Q}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with TestClient(create_app(settings(), engines)) as c:
        chunks = sse(c.post("/v1/chat/completions", json=chat).text)
        bad = c.post("/v1/chat/completions", json={**chat, "stream": False})
    *rest, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    assert last["usage"]["total_tokens"] == last["usage"]["completion_tokens"]
    assert all(c["usage"] is None for c in rest)
    error = assert_error(bad, 422, "validation_error")
    assert "stream_options" in error["message"]


async def test_a_stream_that_fails_before_it_starts_is_a_json_error() -> None:
    engines = make_engines()
    engines.policy = raising(RuntimeError("bug"))
    app = create_app(settings(), engines)
    async with async_client(app) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": Q}], "stream": True},
        )
    assert_error(
        httpx.Response(r.status_code, headers=r.headers, content=r.content), 500, "internal_error"
    )
