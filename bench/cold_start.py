"""`glore bench cold-start`: a live server's start to /ready with its engines loading one after
another and together (GLORE_LOAD_CONCURRENCY), interleaved on the same machine; writes
reports/bench-cold-start.{json,md}."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import write_report
from bench.live import Deployment, LiveServer, load_breakdown, tree_cpu_seconds
from engines.base import Role

# The target for the all-vLLM in-process cold start of models/tiny.
TARGET_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from engines.backends import backend_names

    parser.add_argument("--run", type=Path, default=Path("models/tiny"), help="run dir")
    parser.add_argument(
        "--backend",
        default="vllm",
        help=f"every role's backend, or GENERATORS+SCORERS (default vllm; {backend_names()})",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="starts of each mode (default 2), interleaved"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=len(Role),
        help=f"GLORE_LOAD_CONCURRENCY of the parallel starts (default {len(Role)})",
    )
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder")


def _start(run: Path, env: dict[str, str]) -> dict[str, Any]:
    load_before = os.getloadavg()
    with LiveServer(run, env, ready_timeout_s=900) as live:
        entry: dict[str, Any] = {
            "cold_start_s": round(live.cold_start_s, 2),
            # The CPU the start took, the server and its engine processes together: on a
            # shared machine, wall time is mostly a wait for a core.
            "cpu_s": round(tree_cpu_seconds(live.process.pid), 1),
            "breakdown": load_breakdown(live.url, live.cold_start_s),
            "peak_rss_mib": round(live.peak_rss / 2**20),
        }
    entry["loadavg_before"] = [round(x, 2) for x in load_before]
    entry["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return entry


def bench_cold_start(args: argparse.Namespace) -> dict[str, Any]:
    where = Deployment.parse(args.backend)
    modes = {"serial": 1, "parallel": args.concurrency}
    base_env = {**where.env(), "GLORE_LOG_LEVEL": "WARNING"}
    starts: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for i in range(args.repeats):
        # Alternate which goes first, so a machine getting busier or quieter favours neither.
        for mode in list(modes) if i % 2 == 0 else list(modes)[::-1]:
            env = {**base_env, "GLORE_LOAD_CONCURRENCY": str(modes[mode])}
            entry = _start(args.run, env) | {"order": i}
            print(f"{mode} #{i + 1}: {entry['cold_start_s']:.1f} s", flush=True)
            starts[mode].append(entry)
    median = {m: statistics.median(s["cold_start_s"] for s in starts[m]) for m in modes}
    report: dict[str, Any] = {
        "bench": "cold-start",
        "run": str(args.run),
        "backend": where.label,
        "options": dict(where.generator_options),
        "concurrency": modes,
        "cpus": os.cpu_count(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "starts": starts,
        "median_s": median,
        "ratio_parallel_to_serial": round(median["parallel"] / median["serial"], 3),
    }
    report["target"] = {
        "metric": "parallel cold start to /ready, median",
        "value": median["parallel"],
        "target": f"<= {TARGET_S:g} s",
        "met": median["parallel"] <= TARGET_S,
    }
    return report


def markdown(r: dict[str, Any]) -> str:
    t = r["target"]
    cpu = statistics.median(s["cpu_s"] for ss in r["starts"].values() for s in ss)
    lines = [
        "# Cold start: engines one after another against engines together",
        "",
        f"- when: {r['written']}; run `{r['run']}`, every role on `{r['backend']}` "
        f"(options {json.dumps(r['options'])}); {r['cpus']} CPUs, shared with whatever else "
        "ran (the load average is beside each start)",
        f"- serial: GLORE_LOAD_CONCURRENCY={r['concurrency']['serial']}; parallel: "
        f"GLORE_LOAD_CONCURRENCY={r['concurrency']['parallel']}; starts interleaved, the "
        "first mode alternating",
        f"- median cold start (process start to /ready 200): serial **{r['median_s']['serial']:.1f}"
        f" s**, parallel **{r['median_s']['parallel']:.1f} s**: parallel ÷ serial "
        f"**{r['ratio_parallel_to_serial']:.2f}**",
        f"- target: {t['metric']} {t['target']}: {t['value']:.1f} s, "
        f"{'met' if t['met'] else '**missed**'}",
        f"- CPU: a start took {cpu:.0f} CPU-seconds (median, the server and its engine "
        f"processes), whichever mode: on {r['cpus']} CPUs no start can take less than "
        f"{cpu / r['cpus']:.0f} s, however its engines overlap and with nothing else running",
        "",
        "| mode | # | cold start | models (wall) | engines' own loads, summed | CPU s (tree) "
        "| load avg before → after | engines |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for mode, starts in r["starts"].items():
        for s in starts:
            b = s["breakdown"]
            engines = ", ".join(f"{k} {v:.1f}" for k, v in b["engines_s"].items())
            models = "?" if b["models_s"] is None else f"{b['models_s']:.1f} s"
            lines.append(
                f"| {mode} | {s['order'] + 1} | {s['cold_start_s']:.1f} s | {models} | "
                f"{sum(b['engines_s'].values()):.1f} s | {s['cpu_s']:.0f} | "
                f"{s['loadavg_before'][0]:.1f} → {s['loadavg_after'][0]:.1f} | {engines} |"
            )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    report = bench_cold_start(args)
    text = markdown(report)
    write_report(args.out, "cold-start", report, text)
    print(text)
    return 0 if report["target"]["met"] else 1
