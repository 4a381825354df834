"""`glore bench adapters`' report: accuracy paired by question, sessions summarised, the
markdown table and JSON written with no absolute paths of the machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.adapters import accuracy, markdown, summarise_sessions, write_report
from bench.service import ROOT


def _eval(folder: Path, greedy: list[bool], glore: list[bool]) -> Path:
    """A `glore eval` report.json and its records.jsonl: two methods over the same questions."""
    folder.mkdir(parents=True)

    def method(right: list[bool]) -> dict[str, Any]:
        value = sum(right) / len(right)
        return {"accuracy": {"value": value, "ci95": [value - 0.1, value + 0.1]}}

    report = {
        "meta": {"split": "dev", "n_test": len(greedy), "seed": 0, "backend": "hf"},
        "how": {"methods": {"greedy": method(greedy), "glore": method(glore)}},
    }
    (folder / "report.json").write_text(json.dumps(report))
    records = [
        {
            "problem_id": f"q{i}",
            "methods": {"greedy": {"correct": g}, "glore": {"correct": r}},
        }
        for i, (g, r) in enumerate(zip(greedy, glore, strict=True))
    ]
    (folder / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder / "report.json"


def _session(cold: float, rss: float, rps: dict[str, float]) -> dict[str, Any]:
    return {
        "cold_start_s": cold,
        "rss_ready_mib": rss / 2,
        "peak_rss_mib": rss,
        "strategies": {
            "greedy": {
                c: {"throughput_rps": v, "latency_s": {"p50": 1 / v}, "statuses": {"200": 16}}
                for c, v in rps.items()
            }
        },
        "loadavg_before": [2.0, 2.0, 2.0],
        "loadavg_after": [2.5, 2.0, 2.0],
        "order": 0,
    }


def test_accuracy_pairs_the_same_questions(tmp_path: Path) -> None:
    full = _eval(tmp_path / "full", [True, True, False, False], [True, True, True, False])
    ada = _eval(tmp_path / "ada", [True, True, False, False], [True, False, False, True])
    acc = accuracy(full, ada)
    assert acc["measured"] and acc["same_questions"]
    glore = acc["methods"]["glore"]
    assert glore["full"]["value"] == 0.75 and glore["adapters"]["value"] == 0.5
    assert glore["difference"] == -0.25
    assert glore["paired"] == {
        "questions": 4,
        "both_right": 1,
        "full_only": 2,
        "adapters_only": 1,
        "both_wrong": 0,
    }
    assert acc["methods"]["greedy"]["paired"]["full_only"] == 0
    # Methods missing from the reports are left out, not reported as zero.
    assert "global_only" not in acc["methods"]


def test_accuracy_says_when_questions_differ_or_reports_are_missing(tmp_path: Path) -> None:
    full = _eval(tmp_path / "full", [True, False], [True, False])
    ada = _eval(tmp_path / "ada", [True, False, True], [True, False, True])
    acc = accuracy(full, ada)
    assert acc["same_questions"] is False
    assert "paired" not in acc["methods"]["glore"]
    assert accuracy(None, ada)["measured"] is False


def test_sessions_summarised_by_median_and_peak() -> None:
    sessions = [
        _session(10.0, 800, {"1": 2.0, "16": 6.0}),
        _session(30.0, 700, {"1": 4.0, "16": 8.0}),
        _session(20.0, 900, {"1": 3.0, "16": 7.0}),
    ]
    sm = summarise_sessions(sessions)
    assert sm["cold_start_s"] == 20.0
    assert sm["peak_rss_mib"] == 900
    assert sm["throughput_rps"]["greedy"] == {"1": 3.0, "16": 7.0}
    assert sm["errors_5xx"] == 0


def test_the_report_holds_the_table_and_no_absolute_paths(tmp_path: Path) -> None:
    full_eval = _eval(tmp_path / "full", [True, False], [True, True])
    ada_eval = _eval(tmp_path / "ada", [True, False], [True, False])
    sessions = {
        "full": [_session(12.0, 1000, {"1": 2.0, "16": 5.0})],
        "adapters": [_session(9.0, 600, {"1": 2.5, "16": 6.0})],
    }
    report = {
        "created": "2026-12-02T18:00:00Z",
        "runs": {
            name: {
                "path": f"tiny-{name}",
                "refiners": {
                    r: {"adapter": name == "adapters", "mib_on_disk": 1.0}
                    for r in ("refine_global", "refine_local")
                },
                "refiners_train_s": 600.0,
            }
            for name in ("full", "adapters")
        },
        "settings": {"rounds": 1, "server_threads": 1, "max_new_tokens": 128, "requests": {}},
        "host": {
            "cpu": "x86_64",
            "cpu_count": 2,
            "torch": "2",
            "vllm": None,
            "loadavg_before": [2.0],
            "loadavg_after": [3.0],
        },
        "accuracy": accuracy(full_eval, ada_eval),
        "backends": {
            "hf": {
                "engines": {
                    "full": [["policy"], ["orm"], ["sorm"], ["refine_global"], ["refine_local"]],
                    "adapters": [["policy", "refine_global", "refine_local"], ["orm"], ["sorm"]],
                },
                "sessions": sessions,
                "summary": {k: summarise_sessions(v) for k, v in sessions.items()},
            }
        },
    }
    paths = write_report(report, tmp_path / "reports")
    assert [p.name for p in paths] == ["bench-adapters.json", "bench-adapters.md"]
    assert json.loads(paths[0].read_text())["backends"]["hf"]["summary"]["full"]["peak_rss_mib"]
    text = paths[1].read_text()
    assert text == markdown(report)
    assert "| engines loaded | 5 | 3 | |" in text
    assert "| cold start to /ready (s) | 12.0 | 9.0 | 0.75× |" in text
    assert "| peak RSS, process tree (MiB) | 1000 | 600 | 0.60× |" in text
    assert "| greedy requests/s, concurrency 16 | 5.00 | 6.00 | 1.20× |" in text
    assert "| glore | 1.000 | 0.500 | -0.500 | 1 | 0 |" in text
    assert "policy+refine_global+refine_local" in text
    # Eval sources outside the repository are shown by their last two parts, never absolute.
    for p in paths:
        assert str(tmp_path) not in p.read_text() and str(ROOT) not in p.read_text()


def test_serving_figures_are_kept_when_only_accuracy_is_read_again(tmp_path: Path) -> None:
    import argparse

    from bench.adapters import add_arguments, bench_adapters

    kept = tmp_path / "bench-adapters.json"
    kept.write_text(json.dumps({"backends": {"hf": {"x": 1}}, "accuracy": {"measured": False}}))
    full = _eval(tmp_path / "full", [True, False], [True, True])
    ada = _eval(tmp_path / "ada", [True, False], [False, True])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    evals = ["--full-eval", str(full), "--adapters-eval", str(ada)]
    args = parser.parse_args(
        ["--full", "f", "--adapters", "a", "--serving-from", str(kept), *evals]
    )
    report = bench_adapters(args)
    assert report["backends"] == {"hf": {"x": 1}}
    assert report["accuracy"]["methods"]["glore"]["paired"]["full_only"] == 1
