"""`glore serve` refuses bad set-ups before starting a server, naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glore.cli import main
from glore.serve import missing_roles


def test_missing_roles_lists_roles_without_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "config.json").write_text("{}")
    assert missing_roles(tmp_path) == ["orm", "sorm", "refine_global", "refine_local"]


def test_serve_refuses_a_run_without_checkpoints_naming_each_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--run", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    for role in ["policy", "orm", "sorm", "refine_global", "refine_local"]:
        assert f"{role} ({tmp_path / role})" in err
    assert "--train-if-missing" in err


def test_serve_refuses_invalid_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GLORE_LIMITS__MAX_IN_FLIGHT", "0")
    assert main(["serve", "--run", str(tmp_path)]) == 2
    assert "max_in_flight" in capsys.readouterr().err


def test_serve_without_a_run_names_the_settings_to_use(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GLORE_RUN_DIR", raising=False)
    assert main(["serve"]) == 2
    assert "GLORE_RUN_DIR" in capsys.readouterr().err


def test_serve_refuses_a_broken_serving_file_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "serving.json").write_text('{"sorm_threshold": "high"}')
    assert main(["serve", "--run", str(tmp_path), "--port", "0"]) == 2
    assert "serving.json" in capsys.readouterr().err


def test_serve_refuses_a_run_trained_under_another_text_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = {"stages": {"policy": {"status": "done", "text_fingerprint": "0123456789abcdef"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(stale))
    assert main(["serve", "--run", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "policy (0123456789abcdef)" in err and "--allow-stale-text-contract" in err
    # with the override it goes on, to the next check (here: no checkpoints)
    argv = ["serve", "--run", str(tmp_path), "--port", "0", "--allow-stale-text-contract"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "warning" in err and "--train-if-missing" in err


def test_eval_refuses_a_run_trained_under_another_text_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = {"stages": {"orm": {"status": "done", "text_fingerprint": "0123456789abcdef"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(stale))
    assert main(["eval", "--run", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    assert "orm (0123456789abcdef)" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
