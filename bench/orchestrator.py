"""`glore bench orchestrator`: a replica whose five roles are remote, on vLLM servers (started
here, or given by URL): its cold start to /ready, its resident memory ready and under load, and
that it maps no torch. Writes reports/bench-orchestrator.json and .md."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import write_report
from bench.live import Deployment, LiveServer, tree_rss

TARGETS = {"cold_start_s_max": 3.0, "rss_mib_max": 300.0}
QUESTION = "Mia has 3 apples and buys 4 more. How many apples does she have?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, default=None, help="run dir (default: models/tiny)")
    parser.add_argument(
        "--policy-url",
        help="a running completions server for the policy and refiners (default: start vLLM on "
        "the run's policy, refiner adapters as its LoRA modules, a server for each refiner that "
        "is a model of its own)",
    )
    parser.add_argument(
        "--scorer-url",
        help="a running pooling server for the ORM and SORM (default: start a vLLM pooling "
        "server for each distinct reward checkpoint)",
    )
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time (default 3)")
    parser.add_argument(
        "--requests", type=int, default=32, help="GLoRe solves under load (default 32)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="callers at once (default 8)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="report folder")


def remote_env(role_options: dict[str, dict[str, object]]) -> dict[str, str]:
    """A replica's environment with every role remote, each on its server (bench service's
    remote deployment builds the same settings from the same Deployment)."""
    where = Deployment.parse("remote").served_by(role_options)
    return {"OMP_NUM_THREADS": "1", "GLORE_LOG_LEVEL": "WARNING", **where.env()}


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _maps_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _load(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    import httpx

    def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        with httpx.Client(timeout=120) as client:
            r = client.post(
                f"{url}/solve", json={"question": QUESTION, "strategy": "glore", "seed": i}
            )
        return r.status_code, time.perf_counter() - start

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": sum(1 for s, _ in results if s == 200),
        "seconds": round(seconds, 2),
        "rps": round(requests / seconds, 2),
        "p50_s": round(statistics.median(t for _, t in results), 3),
    }


def bench_orchestrator(args: argparse.Namespace) -> dict[str, Any]:
    from bench.model_servers import serve_run

    run = args.run or Path("models/tiny")
    # The servers start side by side; each takes a while on a small CPU.
    servers = serve_run(run, policy_url=args.policy_url, scorer_url=args.scorer_url)
    started = servers.servers
    try:
        env = remote_env(servers.options)
        starts = []
        for i in range(args.starts):
            with LiveServer(run, env, ready_timeout_s=120) as live:
                entry: dict[str, Any] = {
                    "cold_start_s": round(live.cold_start_s, 3),
                    # What the start cost in CPU, whatever else the machine runs: on a shared
                    # machine the wall time is mostly waiting for a core.
                    "cold_start_cpu_s": round(_cpu_seconds(live.process.pid), 3),
                    "rss_ready_mib": round(live.rss() / 2**20, 1),
                    "maps_torch": _maps_torch(live.process.pid),
                }
                if i == args.starts - 1:  # the last start also serves a load
                    entry["load"] = _load(live.url, args.requests, args.concurrency)
                    entry["rss_after_load_mib"] = round(tree_rss(live.process.pid) / 2**20, 1)
                entry["peak_rss_mib"] = round(live.peak_rss / 2**20, 1)
                starts.append(entry)
    finally:
        servers.stop()
    cold = [s["cold_start_s"] for s in starts]
    peak = max(max(s["peak_rss_mib"], s["rss_ready_mib"]) for s in starts)
    report = {
        "bench": "orchestrator",
        "run": str(run),
        "model_servers": "started here (vLLM, CPU)" if started else "given",
        "starts": starts,
        "cold_start_s_median": round(statistics.median(cold), 3),
        "cold_start_s_max": max(cold),
        "cold_start_cpu_s_max": max(s["cold_start_cpu_s"] for s in starts),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "peak_rss_mib": peak,
        "maps_torch": any(s["maps_torch"] for s in starts),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report["targets"] = [
        {
            "metric": "cold_start_s (slowest start)",
            "value": report["cold_start_s_max"],
            "target": f"<= {TARGETS['cold_start_s_max']}",
            "met": report["cold_start_s_max"] <= TARGETS["cold_start_s_max"],
        },
        {
            "metric": "peak RSS MiB (ready and under load)",
            "value": peak,
            "target": f"<= {TARGETS['rss_mib_max']}",
            "met": peak <= TARGETS["rss_mib_max"],
        },
        {
            "metric": "torch mapped",
            "value": report["maps_torch"],
            "target": "false",
            "met": not report["maps_torch"],
        },
    ]
    return report


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# bench orchestrator: a replica with every role remote",
        "",
        f"Run `{r['run']}`; model servers {r['model_servers']}; written {r['written']}; "
        f"{r['cpus']} CPUs, load average {r['load_average']} at the end.",
        "",
        "| start | cold start to /ready | its CPU time | RSS ready | peak RSS | torch mapped |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, s in enumerate(r["starts"], start=1):
        lines.append(
            f"| {i} | {s['cold_start_s']:.2f} s | {s['cold_start_cpu_s']:.2f} s | "
            f"{s['rss_ready_mib']:.0f} MiB | "
            f"{s['peak_rss_mib']:.0f} MiB | {str(s['maps_torch']).lower()} |"
        )
    load = r["starts"][-1].get("load")
    if load:
        lines += [
            "",
            f"Load on the last start: {load['requests']} GLoRe solves at concurrency "
            f"{load['concurrency']}: {load['ok']} answered 200, {load['rps']} req/s, p50 "
            f"{load['p50_s']} s; RSS after it {r['starts'][-1]['rss_after_load_mib']:.0f} MiB.",
        ]
    lines += ["", "| target | value | wanted | met |", "| --- | --- | --- | --- |"]
    for t in r["targets"]:
        lines.append(f"| {t['metric']} | {t['value']} | {t['target']} | {t['met']} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    report = bench_orchestrator(args)
    text = markdown(report)
    write_report(args.out, "orchestrator", report, text)
    print(text)
    return 0 if all(t["met"] for t in report["targets"]) else 1
