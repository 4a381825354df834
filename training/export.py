"""`glore export`: the part of a trained run that serving needs, as a self-contained directory
with a hash for every file.

A run directory holds everything its stages made: the training data, the rollout shards with
every continuation, caches. Serving needs far less: the five checkpoints, the tokenizer, the
reranker, the recipe, the manifest and the thresholds evaluation chose. This copies that part
into DIR (symlinks resolved, so DIR can be mounted or copied anywhere) and records each file's
SHA-256 in DIR/manifest.json under `files`, which `check_export` verifies. The embedded default
(`models/tiny`) is such a directory, committed to the repository.

Only stdlib here: `glore export` and the hash check run without torch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "manifest.json"
# What a run keeps for training only: the rollout shards and stage caches, the training and
# rollout data, optimizer and intermediate trainer state. Patterns match the path relative to
# the run, with `/` separators.
EXCLUDE: tuple[str, ...] = (
    "rollouts/*",
    ".cache/*",
    "*/checkpoint-*",
    "*/optimizer.pt",
    "*/scheduler.pt",
    "*/rng_state*.pth",
    "*/trainer_state.json",
    "*/training_args.bin",
    "*.lock",
    "*.tmp",
)
# The committed default must stay small enough to clone quickly.
DEFAULT_LIMIT_BYTES = 40 * 1024 * 1024


class ExportError(ValueError):
    """A run that cannot be exported, or an export whose files do not match their hashes."""


@dataclass(frozen=True)
class ExportResult:
    out: Path
    files: dict[str, str]  # relative path -> sha256
    total_bytes: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Of a run's data, serving and the shipped checks need the held-out questions only; the rest
# (training questions, refiner pairs, the ORM's extra drafts) is training data.
KEEP_DATA = frozenset({"data/val.jsonl", "data/test.jsonl", "data/dev.jsonl"})


def _excluded(rel: str, exclude: tuple[str, ...]) -> bool:
    if exclude and rel.startswith("data/") and rel not in KEEP_DATA:
        return True
    return any(fnmatch.fnmatch(rel, pattern) for pattern in exclude)


def exported_files(run: Path, exclude: tuple[str, ...] = EXCLUDE) -> list[str]:
    """The run's files that serving needs, as sorted relative POSIX paths (manifest excluded)."""
    out: list[str] = []
    for root, dirs, files in os.walk(run, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            rel = PurePosixPath(Path(root, name).relative_to(run)).as_posix()
            if rel != MANIFEST and not _excluded(rel, exclude):
                out.append(rel)
    return out


def export_run(
    run: Path,
    out: Path,
    *,
    exclude: tuple[str, ...] = EXCLUDE,
    limit_bytes: int | None = DEFAULT_LIMIT_BYTES,
    serving_from: Path | None = None,
) -> ExportResult:
    """Copy what serving needs from `run` into `out` (replacing what `out` held) and record
    every file's SHA-256 in `out/manifest.json` under `files`.

    `serving_from`: a test-split report.json of this recipe's run, whose validation-chosen
    thresholds become the export's serving.json, and whose evaluation counts its
    evaluations.json. A rebuilt run has had no evaluation of its own, and evaluating it again
    would look at the test split a second time; the run is deterministic, so the report's
    choices are this run's (the shipped default's test checks that its answers are the
    report's)."""
    run, out = run.resolve(), out.resolve()
    manifest_path = run / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"{run} is not a trained run: it has no {MANIFEST}")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    unfinished = [
        name for name, entry in manifest.get("stages", {}).items() if entry.get("status") != "done"
    ]
    if unfinished:
        raise ExportError(f"{run}: stages not finished: {', '.join(unfinished)}")
    if out == run or run in out.parents:
        raise ExportError(f"--out {out} must lie outside the run {run}")
    # Read before anything is copied: an unreadable report fails the export at once.
    from_report = _serving_from_report(serving_from) if serving_from is not None else {}
    rels = exported_files(run, exclude)
    total = sum((run / rel).stat().st_size for rel in rels)
    if limit_bytes is not None and total > limit_bytes:
        raise ExportError(
            f"{run}: the files serving needs take {total / 2**20:.1f} MiB, over the "
            f"{limit_bytes / 2**20:.0f} MiB limit"
        )

    scratch = out.with_name(out.name + ".export-tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    files: dict[str, str] = {}
    for rel in rels:
        src, dst = run / rel, scratch / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)  # follows symlinks: the export holds real files
        os.chmod(dst, 0o644)
        files[rel] = sha256_file(dst)
    if from_report:
        for name, data in from_report.items():
            (scratch / name).write_text(json.dumps(data, indent=2) + "\n")
            files[name] = sha256_file(scratch / name)
        manifest["serving"] = {"file": "serving.json", **from_report["serving.json"]}
        files = dict(sorted(files.items()))
    manifest["files"] = files
    manifest["exported_from"] = run.name
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.chmod(scratch / MANIFEST, 0o644)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(scratch, out)
    return ExportResult(out=out, files=files, total_bytes=total)


def _serving_from_report(report: Path) -> dict[str, dict[str, Any]]:
    """serving.json and evaluations.json as the test evaluation in `report` left them."""
    try:
        meta = json.loads(report.read_text())["meta"]
        if meta["split"] != "test":
            raise ExportError(
                f"{report} is a {meta['split']} evaluation; thresholds come from test"
            )
        serving = {
            "sorm_threshold": float(meta["sorm_threshold"]),
            "orm_threshold": float(meta["gate_threshold"]),
            "report": report.as_posix(),
            "written": None,
        }
        counts = {"test": int(meta["test_evaluations"]), "dev": int(meta["dev_evaluations"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"--serving-from {report}: not a readable test report ({exc})") from None
    return {"serving.json": serving, "evaluations.json": counts}


def check_export(path: Path) -> dict[str, str]:
    """Verify that `path` holds exactly the files its manifest lists, each with its recorded
    SHA-256. Returns the file table; raises ExportError naming every mismatch."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"{path} has no {MANIFEST}")
    files = json.loads(manifest_path.read_text()).get("files")
    if not isinstance(files, dict) or not files:
        raise ExportError(f"{manifest_path} lists no files: not made by `glore export`")
    present = set(exported_files(path, exclude=()))
    problems = [f"missing: {rel}" for rel in sorted(set(files) - present)]
    problems += [f"not in the manifest: {rel}" for rel in sorted(present - set(files))]
    problems += [
        f"changed: {rel}"
        for rel in sorted(set(files) & present)
        if sha256_file(path / rel) != files[rel]
    ]
    if problems:
        raise ExportError(f"{path} does not match its manifest: " + "; ".join(problems))
    return dict(files)


# ------------------------------------------------------------------ the command


def add_arguments(parser: Any) -> None:
    parser.add_argument("--run", type=Path, required=True, help="a trained run directory")
    parser.add_argument(
        "--out", type=Path, help="where to write the export (e.g. models/tiny); not with --check"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only verify that --run is an export whose files match their manifest hashes",
    )
    parser.add_argument(
        "--serving-from",
        type=Path,
        help="a test-split report.json of this recipe's run: its thresholds become the "
        "export's serving.json (e.g. reports/tiny/report.json)",
    )
    parser.add_argument(
        "--limit-mb",
        type=float,
        default=DEFAULT_LIMIT_BYTES / 2**20,
        help="refuse an export larger than this many MiB (default 40)",
    )


def run(args: Any) -> int:
    import sys

    try:
        if args.check:
            files = check_export(args.run)
            print(f"[glore export] {args.run}: {len(files)} files match their manifest hashes")
            return 0
        if args.out is None:
            print("glore export: --out is required (or --check)", file=sys.stderr)
            return 2
        limit = None if args.limit_mb <= 0 else int(args.limit_mb * 2**20)
        result = export_run(args.run, args.out, limit_bytes=limit, serving_from=args.serving_from)
    except ExportError as exc:
        print(f"glore export: {exc}", file=sys.stderr)
        return 1
    print(
        f"[glore export] {len(result.files)} files, {result.total_bytes / 2**20:.1f} MiB "
        f"-> {result.out}"
    )
    return 0
