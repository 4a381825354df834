"""The trace store behind trace links: off by default, bounded, in memory, one key's traces never
another's; and the web page's routes: public, under a strict Content-Security-Policy."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glore.app import create_app
from routers.ui import PUBLIC_PATHS
from service.pipeline import StrategyName
from service.schemas import SolveRequest, SolveResponse
from service.settings import Settings, unknown_env
from service.state import ANONYMOUS, TraceStore, key_owner
from tests.support.fakes import make_engines

Q = "Tom has 2 apples and buys 3 more bags of 4 apples. How many apples does he have?"
KEYS = ["key-one", "key-two"]


def settings(**overrides: Any) -> Settings:
    return Settings(log_json=True, **overrides)


def solve(request_id: str, question: str = Q) -> tuple[SolveRequest, SolveResponse]:
    """A request and a response, as /solve would hand them to the store."""
    response = SolveResponse.model_validate(
        SolveResponse.model_json_schema()["examples"][0] | {"request_id": request_id}
    )
    return SolveRequest(question=question, include_trace=True), response


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- the store


def test_traces_are_off_by_default_and_an_off_store_keeps_nothing() -> None:
    assert Settings().traces.keep == 0
    store = TraceStore(0)
    store.keep(*solve("a"), ANONYMOUS)
    assert not store.enabled and len(store) == 0 and store.get("a", ANONYMOUS) is None


def test_the_store_keeps_only_the_newest_n_traces_of_all_keys_together() -> None:
    store = TraceStore(2)
    store.keep(*solve("a"), "k1")
    store.keep(*solve("b"), "k2")
    store.keep(*solve("a"), "k1")  # kept again: now the newest
    store.keep(*solve("c"), "k1")
    assert len(store) == 2
    assert store.get("b", "k2") is None
    assert store.get("a", "k1") is not None and store.get("c", "k1") is not None


def test_one_keys_trace_is_neither_readable_nor_replaceable_by_another_key() -> None:
    store = TraceStore(4)
    store.keep(*solve("same-id", "asked by one"), key_owner("key-one"))
    store.keep(*solve("same-id", "asked by two"), key_owner("key-two"))
    one = store.get("same-id", key_owner("key-one"))
    two = store.get("same-id", key_owner("key-two"))
    assert one is not None and one.request.question == "asked by one"
    assert two is not None and two.request.question == "asked by two"
    assert store.get("same-id", ANONYMOUS) is None
    # The store holds digests of keys, never the keys.
    assert "key-one" not in repr(store._traces.keys())


def test_find_answers_404_naming_the_request_id_and_why() -> None:
    for store, why in [(TraceStore(0), "keeps no traces"), (TraceStore(3), "no trace")]:
        with pytest.raises(Exception) as caught:
            store.find("nope", ANONYMOUS)
        error = caught.value
        assert getattr(error, "status", None) == 404
        assert str(error).startswith("request_id: ") and why in str(error)
        assert error.details[0].loc == ["path", "request_id"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- through the app


def test_a_solve_with_include_trace_is_kept_for_its_key_and_no_other() -> None:
    app = create_app(settings(api_keys=KEYS, traces={"keep": 4}), make_engines())
    with TestClient(app) as c:
        solved = c.post(
            "/solve", json={"question": Q, "include_trace": True}, headers=bearer(KEYS[0])
        )
        assert solved.status_code == 200, solved.text
        request_id = solved.json()["request_id"]
        kept = c.get(f"/traces/{request_id}", headers=bearer(KEYS[0]))
        assert kept.status_code == 200, kept.text
        body = kept.json()
        assert body["request"]["question"] == Q and body["request"]["include_trace"] is True
        assert body["response"] == solved.json() and body["request_id"] == request_id
        assert datetime.fromisoformat(body["stored_at"]).tzinfo is not None
        other = c.get(f"/traces/{request_id}", headers=bearer(KEYS[1]))
        unknown = c.get("/traces/never-made", headers=bearer(KEYS[1]))
        assert other.status_code == unknown.status_code == 404
        assert other.json()["error"]["message"] == unknown.json()["error"]["message"]
        assert other.json()["error"]["details"][0]["loc"] == ["path", "request_id"]
        assert c.get(f"/traces/{request_id}").status_code == 401
        # Without include_trace nothing is kept.
        plain = c.post("/solve", json={"question": Q}, headers=bearer(KEYS[0])).json()
        assert c.get(f"/traces/{plain['request_id']}", headers=bearer(KEYS[0])).status_code == 404


def test_a_server_that_keeps_no_traces_says_so_by_the_field() -> None:
    with TestClient(create_app(settings(), make_engines())) as c:
        request_id = c.post("/solve", json={"question": Q, "include_trace": True}).json()[
            "request_id"
        ]
        r = c.get(f"/traces/{request_id}")
        assert r.status_code == 404
        error = r.json()["error"]
        assert error["code"] == "not_found"
        assert (
            error["message"].startswith("request_id: ") and "GLORE_TRACES__KEEP" in error["message"]
        )


def test_the_trace_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLORE_TRACES__KEEP", "25")
    assert Settings().traces.keep == 25
    assert unknown_env({"GLORE_TRACES__KEEP": "25"}) == []  # startup takes it as a setting
    monkeypatch.setenv("GLORE_TRACES__KEEP", "-1")
    with pytest.raises(ValueError, match="keep"):
        Settings()


# ---------------------------------------------------------------- the page's routes


def test_the_page_is_public_like_the_probes_and_the_api_still_needs_a_key() -> None:
    with TestClient(create_app(settings(api_keys=KEYS), make_engines())) as c:
        for path in PUBLIC_PATHS - {"/"}:
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
        assert c.get("/", follow_redirects=False).headers["location"] == "/ui"
        assert c.post("/solve", json={"question": Q}).status_code == 401
        assert c.get("/ui/ui.js.map").status_code == 401  # only the page's own files are open
        options = c.get("/ui/options.json").json()
        assert options["auth"] is True and options["traces_kept"] == 0
        assert options["strategies"] == [s.value for s in StrategyName]
        schema = c.get("/openapi.json", headers=bearer(KEYS[0])).json()
        assert "/traces/{request_id}" in schema["paths"]
        assert not [p for p in schema["paths"] if p == "/" or p.startswith("/ui")]


def test_the_page_serves_only_its_own_files_with_a_strict_policy() -> None:
    with TestClient(create_app(settings(), make_engines())) as c:
        page = c.get("/ui")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert c.get("/ui/ui.js").headers["content-type"].startswith("text/javascript")
        missing = c.get("/ui/..%2Fsolve.py")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert c.get("/ui/options.json").json()["auth"] is False
