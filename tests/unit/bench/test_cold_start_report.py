"""`glore bench cold-start`'s report: both modes' starts, their ratio, the target and the CPU
floor (CPU-seconds over the CPUs) that says whether the target could be met at all."""

from __future__ import annotations

from typing import Any

from bench.cold_start import markdown


def _start(order: int, seconds: float, cpu: float, engines: dict[str, float]) -> dict[str, Any]:
    return {
        "order": order,
        "cold_start_s": seconds,
        "cpu_s": cpu,
        "breakdown": {"engines_s": engines, "models_s": seconds - 1, "before_models_s": 1.0},
        "peak_rss_mib": 8000,
        "loadavg_before": [9.0, 9.0, 9.0],
        "loadavg_after": [12.5, 10.0, 9.0],
    }


def _report() -> dict[str, Any]:
    return {
        "run": "models/tiny",
        "backend": "vllm",
        "options": {"enforce_eager": True},
        "concurrency": {"serial": 1, "parallel": 5},
        "cpus": 2,
        "written": "2026-12-06T20:49:15Z",
        "starts": {
            "serial": [_start(0, 80.0, 120.0, {"policy": 40.0, "orm": 39.0})],
            "parallel": [_start(0, 61.0, 118.0, {"policy": 60.0, "orm": 59.5})],
        },
        "median_s": {"serial": 80.0, "parallel": 61.0},
        "ratio_parallel_to_serial": 0.763,
        "target": {"metric": "parallel", "value": 61.0, "target": "<= 30 s", "met": False},
    }


def test_the_report_puts_both_modes_side_by_side_with_their_ratio() -> None:
    text = markdown(_report())
    assert "serial **80.0 s**, parallel **61.0 s**: parallel ÷ serial **0.76**" in text
    assert (
        "| serial | 1 | 80.0 s | 79.0 s | 79.0 s | 120 | 9.0 → 12.5 | policy 40.0, orm 39.0 |"
        in text
    )
    # Engines loading together overlap: their own loads add up to more than the wall time.
    assert "| parallel | 1 | 61.0 s | 60.0 s | 119.5 s | 118 |" in text
    assert "**missed**" in text


def test_the_report_says_how_fast_a_start_could_be_on_these_cpus() -> None:
    text = markdown(_report())
    assert "a start took 119 CPU-seconds" in text
    assert "on 2 CPUs no start can take less than 60 s" in text
