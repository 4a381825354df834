"""`glore bench service` and `glore bench load` on the tiny checkpoints, scaled down: the reports
they write hold real measurements of a live server, and of the same engine calls made directly
(the limit); the call replay groups calls as they ran."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import direct, load, service
from tests.support.tiny_models import TinyCheckpoints


def parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_phases_put_overlapping_calls_together_and_keep_their_order() -> None:
    calls = [
        {"role": "policy", "start": 0.0, "end": 1.0},  # draft
        {"role": "orm", "start": 1.1, "end": 1.5},  # scoring: ORM and SORM at once
        {"role": "sorm", "start": 1.2, "end": 1.4},
        {"role": "refine_local", "start": 1.7, "end": 2.5},  # refinements at once
        {"role": "refine_global", "start": 1.6, "end": 3.0},
        {"role": "orm", "start": 3.1, "end": 3.2},  # rerank
    ]
    groups = direct.phases(calls)
    assert [[c["role"] for c in g] for g in groups] == [
        ["policy"],
        ["orm", "sorm"],
        ["refine_global", "refine_local"],
        ["orm"],
    ]


def test_eval_accuracy_reads_glore_and_baseline_entries(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    path.write_text(
        json.dumps(
            {
                "strategies": {"glore": {"accuracy": 0.61}, "best_of_n": {"accuracy": 0.55}},
                "greedy_accuracy": 0.5,
                "sorm": {"step_accuracy@0.5": 0.9},
            }
        )
    )
    found = service._eval_accuracy(path)
    assert found["measured"]
    assert found["values"] == {
        "strategies.glore.accuracy": 0.61,
        "strategies.best_of_n.accuracy": 0.55,
        "greedy_accuracy": 0.5,
    }
    assert not service._eval_accuracy(None)["measured"]


def test_bench_service_measures_a_live_server_and_writes_both_reports(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    args = parse(
        service,
        [
            "--run",
            str(tiny_checkpoints.run_dir),
            "--out",
            str(tmp_path),
            "--concurrency",
            "1,4",
            "--requests",
            "4",
            "--strategies",
            "greedy,best_of_3,glore_always",
            "--max-new-tokens",
            "32",
        ],
    )
    assert service.run(args) == 0
    report = json.loads((tmp_path / "bench-service-hf.json").read_text())
    assert report["cold_start_s"] > 0 and report["peak_rss_mib"] > 50
    assert report["peak_rss_by_process_mib"]["server"] > 50
    split = report["cold_start_breakdown"]
    assert split["engines_s"] and all(v > 0 for v in split["engines_s"].values())
    assert 0 < split["models_s"] < report["cold_start_s"]
    assert split["before_models_s"] == round(report["cold_start_s"] - split["models_s"], 2)
    for strategy in ("greedy", "best_of_3", "glore_always"):
        for level, n in (("1", 4), ("4", 16)):
            figures = report["strategies"][strategy][level]
            assert figures["statuses"] == {"200": n}
            lat = figures["latency_s"]
            assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        over = report["overhead"][strategy]
        assert over["raw_mean_s"] > 0 and over["ratio"] > 0
    assert report["overhead"]["greedy"]["engine_calls_per_solve"] == 2  # draft, then ORM
    assert report["overhead"]["glore_always"]["engine_calls_per_solve"] == 6
    summary = report["summary"]
    assert summary["errors_5xx"] == 0
    share = summary["share_of_limit"]
    assert share["concurrency"] == 4
    assert set(share["by_strategy"]) == {"greedy", "best_of_3", "glore_always"}
    for strategy, limit in report["limit"].items():
        # The direct replay made the calls glore made for the same requests: same count, and
        # the same tokens give or take a sampled token's luck in a different batch.
        mine = report["strategies"][strategy]["4"]
        assert limit["requests"] == 16 and limit["concurrency"] == 4
        assert limit["tokens_per_request"] == pytest.approx(mine["tokens_per_request"], rel=0.1)
        # glore measured again beside the direct calls, on the same 16 requests.
        assert limit["glore_statuses"] == {"200": 16}
        assert share["by_strategy"][strategy] == pytest.approx(
            limit["glore_throughput_rps"] / limit["throughput_rps"]
        )
    assert report["limit"]["greedy"]["engine_calls_per_request"] == 2
    assert summary["glore_vs_best_of_3"]["glore_always"]["tokens_ratio"] > 0
    # Targets as data: one row per target and strategy, its verdict agreeing with its numbers.
    rows = report["targets"]
    assert {(t["name"], t["strategy"]) for t in rows} == {
        *(("overhead_solve_over_raw_c1", k) for k in ("greedy", "best_of_3", "glore_always")),
        *(("share_of_limit_c4", k) for k in ("greedy", "best_of_3", "glore_always")),
    }
    for t in rows:
        assert t["backend"] == "hf"
        limit = float(t["target"].split()[-1])
        assert t["met"] == (
            t["value"] <= limit if t["target"].startswith("<=") else t["value"] >= limit
        )
    assert not Path(report["run"]["path"]).is_absolute()
    assert json.loads((tmp_path / "bench-service.json").read_text())["targets"] == rows
    text = (tmp_path / "bench-service-hf.md").read_text()
    assert "load average" in text and "≤ 1.15" in text and "cold start split" in text
    assert "share of the limit at c4" in text and "≥ 0.85" in text
    assert "| figure | target | hf |" in (tmp_path / "bench-service.md").read_text()


def test_bench_load_soaks_a_live_server_and_plots_memory(
    tiny_checkpoints: TinyCheckpoints, tmp_path: Path
) -> None:
    args = parse(
        load,
        [
            "--run",
            str(tiny_checkpoints.run_dir),
            "--out",
            str(tmp_path),
            "--concurrency",
            "4",
            "--requests",
            "24",
            "--windows",
            "3",
            "--max-new-tokens",
            "32",
        ],
    )
    assert load.run(args) == 0
    report = json.loads((tmp_path / "bench-service-load-hf.json").read_text())
    assert report["statuses"] == {"200": 24} and report["errors_5xx"] == 0
    assert len(report["windows"]) == 3
    assert report["rss_end_mib"] > 50
    assert (tmp_path / "bench-service-load-hf.png").stat().st_size > 1000


def test_the_recorded_calls_hold_the_question_check_the_server_runs_beside_a_solve(
    tmp_path: Path,
) -> None:
    import asyncio

    from bench.live import Deployment
    from engines.base import Role
    from engines.registry import load_engines

    run = service.DEFAULT_RUN  # the shipped default has a question profile
    specs = Deployment.parse("hf").specs(run)
    check = direct.question_check(run, specs[Role.POLICY])
    assert check is not None and direct.question_check(tmp_path, specs[Role.POLICY]) is None
    engines = load_engines(specs)
    try:
        body = {"question": "Mia has 3 apples and buys 4 more. How many apples does she have?"}
        body |= {"strategy": "greedy", "max_new_tokens": 16}
        plan = asyncio.run(direct.record(engines, run, body, check))
        bare = asyncio.run(direct.record(engines, run, body))
    finally:
        asyncio.run(engines.close())
    calls = sorted((c["role"], c["method"]) for phase in plan for c in phase)
    assert calls == [("orm", "score"), ("policy", "generate"), ("policy", "logprobs")]
    assert sorted((c["role"], c["method"]) for p in bare for c in p) == [
        ("orm", "score"),
        ("policy", "generate"),
    ]
