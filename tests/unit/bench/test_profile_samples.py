"""py-spy's raw samples summarised per thread, a vLLM child's threads named after the child."""

from __future__ import annotations

import pytest

from bench.service import summarise_samples

RAW = "\n".join(
    [
        'process 10:"python -m glore serve";thread (10): MainThread;run (glore/serve.py:1) 30',
        'process 10:"python -m glore serve";thread (11): glore-orm:hf;score (engines/hf.py:2);'
        "forward (torch/nn/module.py:3) 20",
        'process 10:"python -m glore serve";process 12:"VLLM::Worker_TP0";thread (12): MainThread;'
        "execute_model (vllm/worker.py:4) 150",
        "not a sample line",
    ]
)


def test_each_thread_is_a_share_of_the_wall_time_and_children_are_named() -> None:
    got = summarise_samples(RAW, seconds=2.0, rate=100)
    busy = got["busy_share"]
    assert list(busy) == ["VLLM::Worker_TP0: MainThread", "MainThread", "glore-orm:hf"]
    assert busy["VLLM::Worker_TP0: MainThread"] == pytest.approx(0.75)
    assert busy["MainThread"] == pytest.approx(0.15)
    top = got["top_frames"]["glore-orm:hf"]
    assert {t["frame"] for t in top} == {
        "score (engines/hf.py:2)",
        "forward (torch/nn/module.py:3)",
    }
    assert all(t["share"] == pytest.approx(0.1) for t in top)


def test_a_stack_from_py_spy_without_subprocesses_still_reads() -> None:
    got = summarise_samples("thread (7): glore-policy:hf;step (a.py:1) 50\n", 1.0, 100)
    assert got["busy_share"] == {"glore-policy:hf": pytest.approx(0.5)}
