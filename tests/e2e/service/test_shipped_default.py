"""The embedded default, `models/tiny`, as a newcomer meets it: committed files that match their
manifest hashes, a live server whose answers are the ones the test report recorded, and every
`/solve` example of the README and the docs pages answering what the page shows beside it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ROOT, ServerHandle, start_server
from training.export import DEFAULT_LIMIT_BYTES, check_export

SHIPPED = ROOT / "models" / "tiny"
RECORDS = ROOT / "reports" / "tiny" / "records.jsonl"
# The pages a newcomer reads: the README and the documentation site's pages.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fixed sample of the run's held-out test questions (positions in data/test.jsonl).
SAMPLE = range(0, 200, 25)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    # The shipped run as `make serve` serves it: no settings but the thread count.
    with start_server(SHIPPED, env={"OMP_NUM_THREADS": "1"}) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def test_the_committed_default_matches_its_manifest_hashes() -> None:
    files = check_export(SHIPPED)
    for role in ("policy", "orm", "sorm", "refine_global", "refine_local"):
        assert any(rel.startswith(f"{role}/") and rel.endswith(".safetensors") for rel in files)
    assert not any(rel.startswith("rollouts/") or rel == "data/train.jsonl" for rel in files)
    assert sum((SHIPPED / rel).stat().st_size for rel in files) <= DEFAULT_LIMIT_BYTES
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert all(entry["status"] == "done" for entry in manifest["stages"].values())
    assert manifest.get("serving", {}).get("file") == "serving.json"


def test_solve_on_the_shipped_default_gives_the_answers_the_test_report_recorded(
    client: httpx.Client,
) -> None:
    problems = _jsonl(SHIPPED / "data" / "test.jsonl")
    records = {r["problem_id"]: r for r in _jsonl(RECORDS)}
    report = json.loads((ROOT / "reports" / "tiny" / "report.json").read_text())
    assert report["meta"]["split"] == "test"
    for index in SAMPLE:
        problem = problems[index]
        record = records[problem["id"]]
        # The report's GLoRe row refines every draft; the server's default gates on the ORM.
        r = client.post("/solve", json={"question": problem["question"], "refine": "always"})
        assert r.status_code == 200, r.text
        body = r.json()
        by_label = {c["label"]: c for c in body["candidates"]}
        assert by_label["draft"]["answer"] == record["draft_answer"], problem["id"]
        glore = record["methods"]["glore"]
        assert (body["winner"], body["answer"]) == (glore["winner"], glore["answer"]), problem["id"]
        gated = client.post("/solve", json={"question": problem["question"]}).json()
        assert gated["answer"] == record["methods"]["glore_gated"]["answer"], problem["id"]


def solve_examples(text: str) -> list[tuple[dict[str, Any], str]]:
    """Every `/solve` request a page shows (a curl `-d '{…}'` to /solve) with the answer shown
    after it (the next `"answer": "…"`)."""
    examples = []
    for match in re.finditer(r"curl [^\n]*?/solve.*?-d '(\{[^']*\})'", text, re.S):
        body = json.loads(match.group(1))
        shown = re.search(r'"answer":\s*"([^"]*)"', text[match.end() :])
        assert shown, f"no answer shown after the /solve example {body}"
        examples.append((body, shown.group(1)))
    return examples


def test_every_solve_example_in_the_readme_and_the_docs_answers_what_the_page_shows(
    client: httpx.Client,
) -> None:
    examples = {page.name: solve_examples(page.read_text()) for page in PAGES}
    # The README's own, the service page's and the deployment page's (the unseen-name one).
    assert examples["README.md"] and examples["service.md"] and examples["deployment.md"]
    for page, shown in examples.items():
        for body, answer in shown:
            r = client.post("/solve", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["answer"] == answer, (page, body["question"])
