"""bench service's report: the share of the limit per strategy, judged against its target, in
each deployment's markdown and in the combined table; bad flags are refused by name."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench import service


def _level(rps: float, tokens: float) -> dict[str, Any]:
    lat = {"p50": 0.5, "p95": 0.6, "p99": 0.7, "mean": 0.5}
    return {
        "throughput_rps": rps,
        "tokens_per_request": tokens,
        "statuses": {"200": 16},
        "latency_s": lat,
    }


def _report(backend: str) -> dict[str, Any]:
    strategies = {
        "greedy": {"1": _level(4.0, 30), "16": _level(9.0, 30)},
        "glore_always": {"1": _level(1.0, 90), "16": _level(2.0, 90)},
    }
    return {
        "backend": backend,
        "created": "now",
        "run": {"path": "models/tiny", "source": "given"},
        "settings": {"levels": [1, 16], "max_new_tokens": 32, "server_threads": 1, "requests": {}},
        "host": {
            "cpu": "x86_64",
            "cpu_count": 2,
            "torch": "t",
            "vllm": "v",
            "loadavg_before": [1.0, 1.0, 1.0],
            "loadavg_after": [2.0, 2.0, 2.0],
        },
        "cold_start_s": 3.0,
        "peak_rss_mib": 500.0,
        "rss_after_ready_mib": 400.0,
        "strategies": strategies,
        "limit": {
            "greedy": {"throughput_rps": 10.0, "engine_calls_per_request": 2.0},
            "glore_always": {"throughput_rps": 2.0, "engine_calls_per_request": 6.0},
        },
        "overhead": {
            k: {
                "ratio_median": 1.1,
                "ratio": 1.1,
                "engine_calls_per_solve": 2,
                "solve_mean_s": 0.2,
                "raw_mean_s": 0.18,
            }
            for k in strategies
        },
    }


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    for per in report["limit"].values():
        per["tokens_per_request"] = 30.0
    report["summary"] = service.summarise(report, None)
    report["targets"] = service.targets(report)
    return report


def test_share_of_the_limit_is_glores_top_level_over_the_direct_calls_and_judged() -> None:
    report = _finish(_report("remote"))
    share = report["summary"]["share_of_limit"]
    assert share["concurrency"] == 16
    assert share["by_strategy"] == {"greedy": pytest.approx(0.9), "glore_always": 1.0}
    rows = {(t["name"], t["strategy"]): t for t in report["targets"]}
    assert rows[("share_of_limit_c16", "greedy")]["met"] is True
    assert rows[("share_of_limit_c16", "greedy")]["target"] == ">= 0.85"
    assert not any("over_c1" in name and "overhead" not in name for name, _ in rows)
    text = service.markdown(report)
    assert "share of the limit at c16" in text and "| greedy | 9.00 | 10.00 | 0.900 |" in text


def test_the_share_takes_glores_requests_per_second_measured_beside_the_direct_calls() -> None:
    report = _report("hf")
    report["limit"]["greedy"]["glore_throughput_rps"] = 5.0  # not the level's 9.0
    report = _finish(report)
    assert report["summary"]["share_of_limit"]["by_strategy"]["greedy"] == 0.5
    assert "| greedy | 5.00 | 10.00 | 0.500 |" in service.markdown(report)


def test_a_strategy_below_its_limit_share_is_reported_missed() -> None:
    report = _report("hf")
    report["limit"]["glore_always"]["throughput_rps"] = 4.0  # glore reaches half
    report = _finish(report)
    assert report["summary"]["share_of_limit_target_met"] == {"greedy": True, "glore_always": False}
    missed = [t for t in report["targets"] if not t["met"]]
    assert [(t["name"], t["strategy"], t["value"]) for t in missed] == [
        ("share_of_limit_c16", "glore_always", 0.5)
    ]


def test_the_combined_table_shows_the_share_for_every_deployment(tmp_path: Path) -> None:
    for backend in ("remote", "hf"):
        service.write_reports(_finish(_report(backend)), tmp_path)
    text = (tmp_path / "bench-service.md").read_text()
    assert "| figure | target | hf | remote |" in text
    assert "| share of the limit, top concurrency, glore (always) | ≥ 0.85 | 1.000 | 1.000 |" in (
        text
    )
    combined = json.loads((tmp_path / "bench-service.json").read_text())
    assert {t["backend"] for t in combined["targets"]} == {"hf", "remote"}


@pytest.mark.parametrize("flag", ["--policy-url", "--scorer-url"])
def test_a_model_server_url_without_remote_roles_is_refused_naming_the_flag(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    service.add_arguments(parser)
    args = parser.parse_args(["--run", str(tmp_path), "--out", str(tmp_path), flag, "http://x:1"])
    assert service.run(args) == 1
    assert flag in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_the_combined_targets_leave_out_a_stale_reports_retired_c16_over_c1_rows(
    tmp_path: Path,
) -> None:
    old = _finish(_report("vllm"))
    old["targets"].append(
        {"name": "throughput_c16_over_c1", "backend": "vllm", "strategy": "greedy", "met": False}
    )
    (tmp_path / "bench-service-vllm.json").write_text(json.dumps(old))
    service.write_reports(_finish(_report("hf")), tmp_path)
    combined = json.loads((tmp_path / "bench-service.json").read_text())
    names = {t["name"] for t in combined["targets"]}
    assert "share_of_limit_c16" in names and "throughput_c16_over_c1" not in names


def test_rewriting_the_combined_report_keeps_its_sections_written_by_hand(tmp_path: Path) -> None:
    service.write_reports(_finish(_report("hf")), tmp_path)
    path = tmp_path / "bench-service.md"
    path.write_text(path.read_text() + "\n## Why (by hand)\n\nBecause.\n")
    service.write_reports(_finish(_report("remote")), tmp_path)
    text = path.read_text()
    assert text.count("## Why (by hand)") == 1 and text.endswith("Because.\n")
    assert "| figure | target | hf | remote |" in text
