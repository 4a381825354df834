"""The web page at /ui in a real browser (Debian's chromium through Playwright) against live
servers on the shipped default: what it draws is what /solve answered, errors come through with
the server's words, every strategy is compared, hostile text stays text, and trace links open a
past solve for the key that made it only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Response, expect

from service.pipeline import StrategyName
from tests.e2e.ui.screenshots import README_QUESTION, SHIPPED, ask, run, shoot
from tests.support.browser import PHONE, Tab, chromium, open_tab
from tests.support.server import ServerHandle, start_server

KEYS = ("key-one", "key-two")
SEED = "7"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    # The shipped run as `make serve` serves it.
    with start_server(SHIPPED, env={"OMP_NUM_THREADS": "1"}) as handle:
        yield handle


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[ServerHandle]:
    env = {"OMP_NUM_THREADS": "1", "GLORE_API_KEYS": ",".join(KEYS), "GLORE_TRACES__KEEP": "4"}
    with start_server(SHIPPED, env=env) as handle:
        yield handle


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    t = open_tab(browser)
    yield t
    t.close()


def open_page(tab: Tab, url: str, path: str = "/ui") -> Page:
    tab.page.goto(url + path)
    # The form is drawn from /ui/options.json: ready once the strategies are there.
    expect(tab.page.locator("#strategy option")).not_to_have_count(0)
    return tab.page


def solve_in_page(page: Page, **knobs: str) -> dict[str, Any]:
    """Click Solve and return the /solve JSON that this click fetched."""
    with page.expect_response(lambda r: r.url.endswith("/solve")) as answer:
        run(page, "solve")
    response: Response = answer.value
    body: dict[str, Any] = response.json()
    return body


def number(text: str) -> float:
    found = re.search(r"-?\d+(\.\d+)?", text)
    assert found, f"no number in {text!r}"
    return float(found.group())


def close_to(shown: str, value: float, digits: int = 3) -> bool:
    """What the page shows, rounded to `digits`, is `value`."""
    return abs(number(shown) - value) <= 0.5 * 10**-digits + 1e-9


def same_origin_only(tab: Tab, url: str) -> None:
    strangers = [r for r in tab.requests if not r.startswith(url + "/")]
    assert not strangers, f"requests left for another origin: {strangers}"


# ---------------------------------------------------------------- the page itself


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag == "style":
            self.inline.append("<style>")
        self.attrs += [name for name, _ in attrs]

    def handle_data(self, data: str) -> None:
        if self.scripts and self.lasttag == "script" and data.strip():
            self.inline.append(data)


def test_the_page_and_its_files_come_with_a_policy_that_allows_this_origin_only(
    server: ServerHandle,
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        root = c.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/ui"
        page = c.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for path in ("/ui", "/ui/ui.js", "/ui/ui.css", "/ui/favicon.svg"):
            r = c.get(path)
            assert r.status_code == 200, path
            csp = dict(
                part.strip().split(" ", 1)
                for part in r.headers["content-security-policy"].split(";")
            )
            assert csp["default-src"] == "'none'"
            assert csp["script-src"] == csp["style-src"] == csp["connect-src"] == "'self'"
            assert r.headers["x-content-type-options"] == "nosniff"
    markup = _Markup()
    markup.feed(page.text)
    # No inline script or style, nor event-handler or style attributes: the policy forbids
    # them, so the page must not need them.
    assert markup.scripts == [{"src": "/ui/ui.js", "defer": None}]
    assert not markup.inline
    assert not [a for a in markup.attrs if a == "style" or a.startswith("on")]
    # Everything it links to is its own.
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)


# ---------------------------------------------------------------- one solve


def test_a_readme_question_shows_the_steps_scores_winner_and_timings_of_its_solve(
    server: ServerHandle, tab: Tab
) -> None:
    page = open_page(tab, server.url)
    ask(page, README_QUESTION, refine="always", seed=SEED)
    answered = solve_in_page(page)
    # The same request again: the same seed gives the same steps, scores and winner.
    with httpx.Client(base_url=server.url, timeout=120) as c:
        again = c.post(
            "/solve",
            json={
                "question": README_QUESTION,
                "refine": "always",
                "seed": int(SEED),
                "include_trace": True,
            },
        ).json()
    for body in (answered, again):
        assert body["answer"] == "60"  # the README's answer

    draft = next(c for c in answered["candidates"] if c["kind"] == "draft")
    draft_steps = [s.strip() for s in draft["text"].split("\n") if s.strip()]
    assert draft_steps == [
        s.strip()
        for s in next(c for c in again["candidates"] if c["kind"] == "draft")["text"].split("\n")
        if s.strip()
    ]
    scores = answered["sorm_step_scores"]
    assert scores == again["sorm_step_scores"] and len(scores) == len(draft_steps)

    rows = page.locator("#draft-steps li[data-index]")
    expect(rows).to_have_count(len(draft_steps))
    for i, (step, score) in enumerate(zip(draft_steps, scores, strict=True)):
        row = rows.nth(i)
        assert row.locator(".text").text_content() == step
        assert close_to(row.locator(".score").inner_text(), score)
        below = score < answered["decision"]["sorm_threshold"]
        assert ("weak" in (row.get_attribute("class") or "").split()) is below
    flagged = answered["first_flagged_step"]
    if flagged is not None:
        expect(rows.nth(flagged)).to_have_class(re.compile(r"\bflagged\b"))
    target = answered["decision"]["local_target_step"]
    if target is not None:  # the [BAD] marker sits right before the step the critique names
        marker = page.locator("#draft-steps li.bad-marker")
        expect(marker).to_have_count(1)
        following = marker.locator("xpath=following-sibling::li[1]")
        assert following.get_attribute("data-index") == str(target)

    assert page.locator("#winner").inner_text() == answered["winner"] == again["winner"]
    assert page.locator("#answer").inner_text() == answered["answer"]
    assert page.locator("#decision").inner_text() == answered["decision"]["action"]
    assert page.locator("#reason").inner_text() == answered["decision"]["reason"]
    assert close_to(page.locator("#draft-orm").inner_text(), draft["orm_score"])
    assert close_to(
        page.locator("#orm-threshold").inner_text(), answered["decision"]["orm_threshold"]
    )

    cards = page.locator("#candidates article")
    expect(cards).to_have_count(len(answered["candidates"]))
    for i, cand in enumerate(answered["candidates"]):
        card = cards.nth(i)
        assert card.get_attribute("data-label") == cand["label"]
        assert card.locator("[data-field=answer]").inner_text() == (cand["answer"] or "none")
        assert close_to(card.locator("[data-field=orm_score]").inner_text(), cand["orm_score"])
        assert close_to(card.locator("[data-field=rank_score]").inner_text(), cand["rank_score"], 4)
        winner = cand["label"] == answered["winner"]
        assert ("winner" in (card.get_attribute("class") or "").split()) is winner
    assert page.locator("#candidates article.winner").count() == 1

    stages = {k: v for k, v in answered["timings"].items() if k != "total"}
    for stage, seconds in answered["timings"].items():
        shown = page.locator(f"#timings tr[data-stage={stage}] td.num").first.inner_text()
        assert close_to(shown, seconds), stage
    expect(page.locator("#timebar span")).to_have_count(len(stages))
    for role, tokens in answered["usage"]["by_role"].items():
        assert page.locator(f"#usage tr[data-role={role}] td.num").inner_text() == str(tokens)
    total = page.locator("#usage tr[data-role=total] td.num").inner_text()
    assert total == str(answered["usage"]["completion_tokens"])
    assert not tab.errors and not tab.dialogs
    same_origin_only(tab, server.url)


def test_an_empty_question_shows_the_servers_422_naming_the_field(
    server: ServerHandle, tab: Tab
) -> None:
    page = open_page(tab, server.url)
    ask(page, "")
    answered = solve_in_page(page)
    assert answered["error"]["code"] == "validation_error"
    error = page.locator("#error")
    expect(error).to_be_visible()
    text = error.inner_text()
    assert "422 validation_error" in text and "question" in text
    assert answered["error"]["message"] in text
    expect(page.locator("#solve-view")).to_be_hidden()


def test_the_page_stays_readable_at_phone_width(server: ServerHandle, browser: Browser) -> None:
    tab = open_tab(browser, PHONE)
    try:
        page = open_page(tab, server.url)
        ask(page, README_QUESTION, seed=SEED)
        solve_in_page(page)
        # Nothing is wider than the screen: no sideways scrolling of the page.
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width
        expect(page.locator("#answer")).to_be_visible()
        expect(page.locator("#candidates article").first).to_be_visible()
    finally:
        tab.close()


# ---------------------------------------------------------------- compare strategies


def test_the_compare_view_lists_every_strategy_with_the_answer_and_cost_of_its_solve(
    server: ServerHandle, tab: Tab
) -> None:
    page = open_page(tab, server.url)
    ask(page, README_QUESTION, seed=SEED)
    answers: dict[str, dict[str, Any]] = {}

    def record(response: Response) -> None:
        if response.url.endswith("/solve"):
            body = response.json()
            answers[body["strategy"]] = body

    page.on("response", record)
    run(page, "compare")
    rows = page.locator("#compare-table tbody tr")
    expect(rows).to_have_count(len(StrategyName))
    shown = [rows.nth(i).get_attribute("data-strategy") for i in range(rows.count())]
    assert shown == [s.value for s in StrategyName]
    assert set(answers) == set(shown)
    for i, name in enumerate(shown):
        row, body = rows.nth(i), answers[name]
        assert row.locator("td.answer").inner_text() == (body["answer"] or "none"), name
        assert row.locator("td.tokens").inner_text() == str(body["usage"]["completion_tokens"])
        assert close_to(row.locator("td.seconds").inner_text(), body["timings"]["total"])
    # A row opens its whole solve, and the way back keeps the table.
    rows.nth(0).locator("button").click()
    expect(page.locator("#solve-view")).to_be_visible()
    assert page.locator("#winner").inner_text() == answers[shown[0]]["winner"]
    page.click("#back")
    expect(page.locator("#compare-table tbody tr")).to_have_count(len(StrategyName))
    same_origin_only(tab, server.url)


# ---------------------------------------------------------------- hostile text

HOSTILE = [
    "<script>window.__pwned = 1</script>Tom has 3 apples. How many apples does he have?",
    '<img src=x onerror="window.__pwned = 2">Ann has 2 pens and buys 3 more. How many pens?',
    '"><svg onload=alert(1)><iframe src="http://example.com/"></iframe> How many?',
    "**Bold** [a link](http://example.com/x) ![img](http://example.com/a.png) `code` <b>b</b>",
]


@pytest.mark.parametrize("question", HOSTILE)
def test_a_hostile_question_renders_as_its_literal_characters_and_runs_nothing(
    server: ServerHandle, tab: Tab, question: str
) -> None:
    page = open_page(tab, server.url)
    ask(page, question, refine="always", seed=SEED)
    answered = solve_in_page(page)
    assert "error" not in answered, answered
    assert page.locator("#shown-question").text_content() == question
    # No element came from the text: the results hold none of the tags it names.
    for tag in ("script", "img", "svg", "iframe", "b"):
        assert page.locator(f"#solve-view {tag}").count() == 0, tag
    assert page.evaluate("() => window.__pwned") is None
    assert not tab.dialogs and not tab.errors
    # Nothing was even tried and refused by the policy: no violation was reported.
    assert not [m for m in tab.console if "Content Security Policy" in m], tab.console
    same_origin_only(tab, server.url)
    # Whatever the models wrote is shown as written too.
    for card, cand in zip(
        page.locator("#candidates article").all(), answered["candidates"], strict=True
    ):
        steps = [s.strip() for s in (cand.get("text") or "").split("\n") if s.strip()]
        assert card.locator("li .text").all_text_contents() == steps
    for warning in answered["warnings"]:
        expect(page.locator(f"#warnings li[data-code={warning['code']}]")).to_be_visible()


# ---------------------------------------------------------------- keys and trace links


def test_a_wrong_key_shows_the_401_and_the_right_one_solves_kept_in_the_tab_only(
    keyed_server: ServerHandle, tab: Tab
) -> None:
    page = open_page(tab, keyed_server.url)  # the page itself needs no key
    expect(page.locator("#key-box")).to_be_visible()
    page.fill("#api-key", "wrong-key")
    page.locator("#api-key").dispatch_event("change")
    ask(page, README_QUESTION, seed=SEED)
    answered = solve_in_page(page)
    assert answered["error"]["code"] == "unauthorized"
    text = page.locator("#error").inner_text()
    assert "401 unauthorized" in text and answered["error"]["message"] in text

    page.fill("#api-key", KEYS[0])
    page.locator("#api-key").dispatch_event("change")
    answered = solve_in_page(page)
    assert answered["answer"] == "60"
    expect(page.locator("#error")).to_be_hidden()
    assert page.locator("#answer").inner_text() == "60"
    storage = page.evaluate(
        "() => [sessionStorage.getItem('glore.apiKey'), localStorage.length, document.cookie]"
    )
    assert storage == [KEYS[0], 0, ""]


def test_a_trace_link_opens_a_past_solve_for_its_own_key_only(
    keyed_server: ServerHandle, browser: Browser, tab: Tab
) -> None:
    page = open_page(tab, keyed_server.url)
    page.fill("#api-key", KEYS[0])
    page.locator("#api-key").dispatch_event("change")
    ask(page, README_QUESTION, refine="always", seed=SEED)
    answered = solve_in_page(page)
    link = page.locator("#trace-link")
    href = link.get_attribute("href")
    assert href == f"/ui?request_id={answered['request_id']}"

    # The same tab (its key in sessionStorage) opens the link: the past solve, as it was.
    page.goto(keyed_server.url + href)
    expect(page.locator("#solve-view")).to_be_visible()
    assert page.locator("#shown-question").text_content() == README_QUESTION
    assert page.locator("#request-id").inner_text() == answered["request_id"]
    assert page.locator("#winner").inner_text() == answered["winner"]
    draft = next(c for c in answered["candidates"] if c["kind"] == "draft")
    steps = [s.strip() for s in draft["text"].split("\n") if s.strip()]
    assert page.locator("#draft-steps li[data-index] .text").all_text_contents() == steps
    assert page.locator("#question").input_value() == README_QUESTION
    assert page.locator("#refine").input_value() == "always"

    # Another key sees no such trace: the same 404 as an unknown id, naming the field.
    other = open_tab(browser)
    try:
        other.page.goto(keyed_server.url + href)
        expect(other.page.locator("#error")).to_contain_text("401 unauthorized")
        other.page.fill("#api-key", KEYS[1])
        other.page.locator("#api-key").dispatch_event("change")
        expect(other.page.locator("#error")).to_contain_text("404 not_found")
        expect(other.page.locator("#error")).to_contain_text("request_id")
        expect(other.page.locator("#solve-view")).to_be_hidden()
    finally:
        other.close()


# ---------------------------------------------------------------- screenshots


def test_both_views_can_be_shot_at_1280_wide(
    server: ServerHandle, browser: Browser, tmp_path: Path
) -> None:
    for png in shoot(browser, server.url, tmp_path):
        header = png.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        width = int.from_bytes(header[16:20], "big")
        height = int.from_bytes(header[20:24], "big")
        assert width == 1280 and height >= 800, (png.name, width, height)
