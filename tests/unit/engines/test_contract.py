"""The text-contract fingerprint: it follows what the prompts render, and a run trained under
another one is refused by name, with the way out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import engines.text as text
from engines.contract import StaleTextContract, check_text_contract
from engines.text import text_fingerprint


def _run(tmp_path: Path, **stages: str | None) -> Path:
    entries = {}
    for name, fingerprint in stages.items():
        entries[name] = {"status": "done"}
        if fingerprint is not None:
            entries[name]["text_fingerprint"] = fingerprint
    entries["sorm"] = {"status": "failed", "text_fingerprint": "0" * 16}  # not a trained stage
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": entries}))
    return tmp_path


def test_the_fingerprint_changes_with_any_rendered_part(monkeypatch: pytest.MonkeyPatch) -> None:
    before = text_fingerprint()
    assert text_fingerprint() == before and len(before) == 16
    for name, value in [
        ("CRITIQUE_MARKER", "[WRONG]"),
        ("STEP_TAG", "<|s|>"),
        ("STEP_SEP", "\n\n"),
        ("_DRAFT", "Attempt:"),
        ("_QUESTION", "Q: "),
    ]:
        with monkeypatch.context() as m:
            m.setattr(text, name, value)
            assert text_fingerprint() != before, name
    assert text_fingerprint() == before


def test_a_run_of_this_contract_passes_silently(tmp_path: Path) -> None:
    run = _run(tmp_path, policy=text_fingerprint(), orm=text_fingerprint())
    assert check_text_contract([run]) == []


def test_a_stale_run_is_refused_naming_the_stage_and_the_ways_out(tmp_path: Path) -> None:
    run = _run(tmp_path, policy=text_fingerprint(), refiners="deadbeefdeadbeef")
    with pytest.raises(StaleTextContract) as err:
        check_text_contract([run])
    message = str(err.value)
    assert "refiners (deadbeefdeadbeef)" in message and "policy" not in message.split(":")[1]
    assert f"glore train all --out {run}" in message
    assert "--allow-stale-text-contract" in message
    warnings = check_text_contract([run], allow_stale=True)
    assert len(warnings) == 1 and "refiners" in warnings[0]


def test_stages_without_a_fingerprint_are_let_through_with_a_warning(tmp_path: Path) -> None:
    run = _run(tmp_path, policy=None, orm=text_fingerprint())
    (warning,) = check_text_contract([run, run])  # one run named twice is checked once
    assert "policy" in warning and "no text fingerprint" in warning


def test_a_folder_without_a_manifest_has_nothing_to_check(tmp_path: Path) -> None:
    assert check_text_contract([tmp_path]) == []
