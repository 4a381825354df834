"""`glore export`: what serving needs, copied with a hash per file, and the check of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from glore.cli import main as glore
from training.export import ExportError, check_export, export_run


def _run(tmp_path: Path, *, unfinished: bool = False) -> Path:
    run = tmp_path / "run"
    files = {
        "policy/model.safetensors": b"\x00weights-policy",
        "policy/config.json": b"{}",
        "orm/model.safetensors": b"\x01weights-orm",
        "tokenizer/tokenizer.json": b'{"model": {}}',
        "reranker/default.json": b'{"name": "lp_kind"}',
        "serving.json": b'{"sorm_threshold": 0.25}',
        "recipe.yaml": b"seed: 0\n",
        "data/test.jsonl": b'{"id": "t-0"}\n',
        "data/val.jsonl": b'{"id": "v-0"}\n',
        # training-only: left out of an export
        "data/train.jsonl": b'{"id": "x"}\n' * 100,
        "data/refine_global_pairs.jsonl": b"{}\n",
        "rollouts/shard-0.jsonl": b"continuations\n",
        ".cache/reranker_rows.json": b"[]",
        "policy/checkpoint-100/optimizer.pt": b"state",
    }
    for rel, data in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    # A checkpoint that is a relative symlink (as when a stage reuses another's weights).
    (run / "sorm").mkdir()
    os.symlink("../orm/model.safetensors", run / "sorm" / "model.safetensors")
    stages = {"data": {"status": "done"}, "policy": {"status": "done"}}
    if unfinished:
        stages["orm"] = {"status": "running"}
    (run / "manifest.json").write_text(json.dumps({"name": "t", "stages": stages}))
    return run


def test_export_keeps_what_serving_needs_as_real_files_with_their_hashes(tmp_path: Path) -> None:
    run = _run(tmp_path)
    result = export_run(run, tmp_path / "models" / "t")
    out = result.out
    assert sorted(result.files) == [
        "data/test.jsonl",
        "data/val.jsonl",
        "orm/model.safetensors",
        "policy/config.json",
        "policy/model.safetensors",
        "recipe.yaml",
        "reranker/default.json",
        "serving.json",
        "sorm/model.safetensors",
        "tokenizer/tokenizer.json",
    ]
    assert not (out / "rollouts").exists() and not (out / "data" / "train.jsonl").exists()
    assert not (out / "sorm" / "model.safetensors").is_symlink()
    assert (out / "sorm" / "model.safetensors").read_bytes() == b"\x01weights-orm"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == result.files and manifest["stages"]["policy"]["status"] == "done"
    assert check_export(out) == result.files
    # Exporting again is deterministic: the same hashes.
    assert export_run(run, tmp_path / "again").files == result.files


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda out: (out / "policy" / "model.safetensors").write_bytes(b"other"), "changed"),
        (lambda out: (out / "orm" / "model.safetensors").unlink(), "missing"),
        (lambda out: (out / "policy" / "extra.bin").write_bytes(b"x"), "not in the manifest"),
    ],
)
def test_the_check_names_every_file_that_differs_from_the_manifest(
    tmp_path: Path, tamper, message: str
) -> None:
    out = export_run(_run(tmp_path), tmp_path / "out").out
    tamper(out)
    with pytest.raises(ExportError, match=message):
        check_export(out)


def test_refuses_an_unfinished_run_an_oversized_one_and_an_output_inside_the_run(
    tmp_path: Path,
) -> None:
    with pytest.raises(ExportError, match="not finished: orm"):
        export_run(_run(tmp_path / "a", unfinished=True), tmp_path / "out-a")
    run = _run(tmp_path / "b")
    with pytest.raises(ExportError, match="over the"):
        export_run(run, tmp_path / "out-b", limit_bytes=10)
    with pytest.raises(ExportError, match="outside the run"):
        export_run(run, run / "export")
    with pytest.raises(ExportError, match=r"no manifest\.json"):
        export_run(tmp_path / "nothing", tmp_path / "out-c")


def test_the_command_exports_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    out = tmp_path / "shipped"
    assert glore(["export", "--run", str(run), "--out", str(out)]) == 0
    assert glore(["export", "--run", str(out), "--check"]) == 0
    (out / "recipe.yaml").write_text("seed: 1\n")
    assert glore(["export", "--run", str(out), "--check"]) == 1
    assert "changed: recipe.yaml" in capsys.readouterr().err


def test_serving_thresholds_come_from_a_test_report_of_the_recipe(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    meta = {"split": "test", "sorm_threshold": 0.25, "gate_threshold": 0.5}
    report.write_text(json.dumps({"meta": meta | {"test_evaluations": 1, "dev_evaluations": 2}}))
    out = export_run(_run(tmp_path), tmp_path / "out", serving_from=report).out
    serving = json.loads((out / "serving.json").read_text())
    assert (serving["sorm_threshold"], serving["orm_threshold"]) == (0.25, 0.5)
    assert json.loads((out / "evaluations.json").read_text()) == {"test": 1, "dev": 2}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["serving"]["orm_threshold"] == 0.5
    check_export(out)  # the written files are hashed too
    report.write_text(json.dumps({"meta": meta | {"split": "dev"}}))
    with pytest.raises(ExportError, match="dev evaluation"):
        export_run(_run(tmp_path / "b"), tmp_path / "out-b", serving_from=report)
