"""The tiny-checkpoint cache: built once under concurrent processes, then reused."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from training import tiny_models


def _fake_build(out: Path, *, verbose: bool) -> None:
    """Stands in for the minute-long training: slow enough for the processes to overlap."""
    marker = out.parent / "builds"
    marker.mkdir(exist_ok=True)
    (marker / f"{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(0.5)
    for name in ("policy", "scorer", "run"):
        (out / name).mkdir()
    (out / "DONE").write_text("{}")


def _build_in(cache: str, queue: multiprocessing.Queue) -> None:
    tiny_models._build = _fake_build  # type: ignore[assignment]
    ckpt = tiny_models.build_tiny_checkpoints(Path(cache), verbose=False)
    queue.put(str(ckpt.policy))


def test_concurrent_processes_build_the_checkpoints_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in, args=(str(tmp_path), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    assert len(list((tmp_path / "builds").iterdir())) == 1
    assert Path(paths.pop()).is_dir()
    # No scratch folders are left behind.
    assert not [p for p in tmp_path.iterdir() if ".build-" in p.name]


def test_a_finished_build_is_reused_without_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_models, "_build", _fake_build)
    first = tiny_models.build_tiny_checkpoints(tmp_path, verbose=False)

    def fail(out: Path, *, verbose: bool) -> None:
        raise AssertionError("rebuilt a finished cache")

    monkeypatch.setattr(tiny_models, "_build", fail)
    assert tiny_models.build_tiny_checkpoints(tmp_path, verbose=False) == first


def test_the_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tiny_models.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert tiny_models.cache_root() == tmp_path / "elsewhere"


def test_generated_problems_are_deterministic_and_closed_by_an_answer_step() -> None:
    a = tiny_models.tiny_problems(20, seed=3)
    assert a == tiny_models.tiny_problems(20, seed=3)
    for p in a:
        assert 2 <= len(p.steps) <= 6
        assert p.steps[-1] == f"The answer is {p.answer}."


def test_a_corrupted_solution_is_wrong_from_its_first_bad_step() -> None:
    import random

    rng = random.Random(0)
    for p in tiny_models.tiny_problems(20, seed=4):
        steps, bad = tiny_models.corrupt(p, rng)
        assert steps[:bad] == p.steps[:bad]
        assert steps[bad] != p.steps[bad]
        assert steps[-1] != p.steps[-1]
