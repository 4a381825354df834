"""`glore bench load`: a soak test of a live server (many requests at a fixed concurrency), with
the server's memory sampled throughout; the bounded version of it runs in the test suite.

Writes reports/bench-service-load-<backend>.json, .md and a PNG of memory and latency over time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import measured, say_wrote
from engines.backends import backend_names

MIXES = {
    "mixed": ["glore_always", "glore_auto", "greedy", "best_of_3"],
    "glore": ["glore_always"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, default=None, help="as for `glore bench service`")
    parser.add_argument("--backend", choices=backend_names(), default="hf")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="default: reports")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once (16)")
    parser.add_argument("--requests", type=int, default=2000, help="total requests (2000)")
    parser.add_argument(
        "--windows", type=int, default=20, help="memory/latency samples over the run (20)"
    )
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine-options", default=None, help="JSON engine options, all roles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="N",
        help="instead of a soak: N concurrent /solve calls at once against a server at its "
        "default settings (admission, queue, strategy), each with the default body "
        "{question} only; writes bench-service-burst-<backend>.json/.md",
    )


def run(args: argparse.Namespace) -> int:
    if args.burst is not None:
        return run_burst(args)
    report = measured("load", soak, args)
    if report is None:
        return 1
    say_wrote(write(report, args.out))
    return 0 if report["errors_5xx"] == 0 else 1


def _server_env(args: argparse.Namespace, **settings: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The bench server's environment (its threads, quiet logs, the backend and `settings`)
    and the engine options it gives every role: `--engine-options`, or the backend's bench
    defaults."""
    from bench.live import Deployment
    from bench.service import engine_options

    where = Deployment.parse(args.backend, engine_options(args.engine_options))
    env = {
        "OMP_NUM_THREADS": str(args.threads),
        "GLORE_LOG_LEVEL": "WARNING",
        **settings,
        **where.env(),
    }
    return env, dict(where.generator_options)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.live import LiveServer, rss_split
    from bench.service import (
        load_level,
        payload,
        questions,
        relative_path,
        resolve_run,
    )

    if args.concurrency < 1 or args.requests < args.windows or args.windows < 2:
        raise ValueError("need concurrency >= 1, windows >= 2 and requests >= windows")
    run_dir, source = resolve_run(args.run)
    env, options = _server_env(args, GLORE_LIMITS__MAX_IN_FLIGHT=str(max(64, 2 * args.concurrency)))
    qs = questions(256, args.seed)
    mix = MIXES[args.mix]
    per_window = args.requests // args.windows
    windows: list[dict[str, Any]] = []
    with (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as progress,
        LiveServer(run_dir, env) as server,
    ):
        task = progress.add_task(
            f"{args.backend}: soak at c{args.concurrency}", total=args.requests
        )
        start_rss = server.rss()
        start = time.perf_counter()
        for w in range(args.windows):
            bodies = [
                payload(mix[i % len(mix)], qs[i % len(qs)], i, args.max_new_tokens, args.seed)
                for i in range(w * per_window, (w + 1) * per_window)
            ]
            figures, _ = asyncio.run(load_level(server.url, bodies, args.concurrency))
            figures["rss_mib"] = server.rss() / 2**20
            own, children = rss_split(server.process.pid)
            figures["rss_server_mib"], figures["rss_children_mib"] = own / 2**20, children / 2**20
            figures["elapsed_s"] = time.perf_counter() - start
            windows.append(figures)
            progress.advance(task, per_window)
        peak = server.peak_rss
    statuses: dict[str, int] = {}
    for f in windows:
        for code, n in f["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    # Growth after the first window: the first fills allocator pools and caches once.
    return {
        "backend": args.backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": {"path": relative_path(run_dir), "source": source},
        "settings": {
            "concurrency": args.concurrency,
            "requests": per_window * args.windows,
            "mix": mix,
            "max_new_tokens": args.max_new_tokens,
            "engine_options": options,
            "threads": args.threads,
        },
        "statuses": statuses,
        "errors_5xx": sum(n for code, n in statuses.items() if code.startswith("5")),
        "rss_start_mib": start_rss / 2**20,
        "rss_after_first_window_mib": windows[0]["rss_mib"],
        "rss_end_mib": windows[-1]["rss_mib"],
        "rss_growth_after_warmup_mib": windows[-1]["rss_mib"] - windows[0]["rss_mib"],
        "peak_rss_mib": peak / 2**20,
        "wall_s": windows[-1]["elapsed_s"],
        "throughput_rps": per_window * args.windows / windows[-1]["elapsed_s"],
        "windows": windows,
    }


def run_burst(args: argparse.Namespace) -> int:
    report = measured("load", burst, args)
    if report is None:
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-service-burst-{args.backend}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# A burst of {report['requests']} concurrent /solve calls ({args.backend})",
        "",
        f"Server at its default settings (max_in_flight {report['server']['max_in_flight']}, "
        f"max_queue {report['server']['max_queue']}); run `{report['run']['path']}`; "
        f"{report['created']}.",
        "",
        "| statuses | served (200) | 5xx | wall s | p50 s | p95 s | queued | mean queue wait s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {report['statuses']} | {report['served_share']:.1%} | {report['errors_5xx']} "
        f"| {report['wall_s']:.1f} | {report['latency_s']['p50']:.2f} "
        f"| {report['latency_s']['p95']:.2f} | {report['queued']} "
        f"| {report['queue_wait_mean_s']:.2f} |",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {stem}.json, {stem}.md")
    ok = report["errors_5xx"] == 0 and report["served_share"] >= 0.95
    return 0 if ok else 1


def burst(args: argparse.Namespace) -> dict[str, Any]:
    """`args.burst` concurrent default /solve calls against a server at default settings."""
    import asyncio

    import httpx

    from bench.live import LiveServer
    from bench.service import load_level, questions, relative_path, resolve_run
    from service.settings import Limits

    if args.burst < 1:
        raise ValueError("--burst needs N >= 1")
    run_dir, source = resolve_run(args.run)
    env, _ = _server_env(args)  # the server's own limits: the burst is what is measured
    qs = questions(args.burst, args.seed)
    bodies = [{"question": q} for q in qs]
    with LiveServer(run_dir, env) as server:
        figures, _ = asyncio.run(load_level(server.url, bodies, args.burst))
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    waits = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("glore_queue_wait_seconds_sum")
    ]
    counts = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("glore_queue_wait_seconds_count")
    ]
    statuses = figures["statuses"]
    limits = Limits()
    return {
        "backend": args.backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": {"path": relative_path(run_dir), "source": source},
        "server": {"max_in_flight": limits.max_in_flight, "max_queue": limits.max_queue},
        "requests": args.burst,
        "statuses": statuses,
        "served_share": statuses.get("200", 0) / args.burst,
        "errors_5xx": sum(n for code, n in statuses.items() if code.startswith("5")),
        "wall_s": figures["wall_s"],
        "latency_s": figures["latency_s"],
        "queued": int(counts[0]) if counts else 0,
        "queue_wait_mean_s": waits[0] / counts[0] if counts and counts[0] else 0.0,
    }


def write(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    name = out / f"bench-service-load-{report['backend']}"
    paths = [name.with_suffix(".json"), name.with_suffix(".md"), name.with_suffix(".png")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    s = report["settings"]
    lines = [
        f"# Soak: {s['requests']} requests at concurrency {s['concurrency']} ({report['backend']})",
        "",
        f"- when: {report['created']}; run `{report['run']['path']}` ({report['run']['source']}); "
        "on a 2-core machine shared with other jobs",
        f"- mix: {', '.join(s['mix'])}; max_new_tokens {s['max_new_tokens']}",
        f"- statuses: {report['statuses']} (5xx: **{report['errors_5xx']}**)",
        f"- throughput {report['throughput_rps']:.1f} requests/s over {report['wall_s']:.0f} s",
        f"- RSS of the server's process tree: {report['rss_start_mib']:.0f} MiB at start, "
        f"{report['rss_after_first_window_mib']:.0f} after the first window, "
        f"{report['rss_end_mib']:.0f} at the end: growth after warm-up "
        f"**{report['rss_growth_after_warmup_mib']:+.1f} MiB**; peak {report['peak_rss_mib']:.0f}",
        "",
        "RSS: the whole process tree; in brackets, the server process and its children (vLLM's "
        "engine cores, whose KV cache pages become resident as they are first used).",
        "",
        "| window | elapsed s | requests/s | p50 ms | p99 ms | RSS MiB (server + children) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, w in enumerate(report["windows"]):
        lines.append(
            f"| {i + 1} | {w['elapsed_s']:.0f} | {w['throughput_rps']:.1f} | "
            f"{w['latency_s']['p50'] * 1000:.0f} | {w['latency_s']['p99'] * 1000:.0f} | "
            f"{w['rss_mib']:.0f} ({w['rss_server_mib']:.0f} + {w['rss_children_mib']:.0f}) |"
        )
    lines += ["", f"![memory and latency over the soak]({paths[2].name})"]
    paths[1].write_text("\n".join(lines) + "\n")
    _plot(report, paths[2])
    return paths


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = report["windows"]
    x = [f["elapsed_s"] for f in w]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(x, [f["rss_mib"] for f in w], marker="o")
    top.set_ylabel("server RSS (MiB)")
    top.set_title(f"soak at concurrency {report['settings']['concurrency']} ({report['backend']})")
    bottom.plot(x, [f["latency_s"]["p50"] * 1000 for f in w], label="p50")
    bottom.plot(x, [f["latency_s"]["p99"] * 1000 for f in w], label="p99")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("elapsed (s)")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="glore bench load")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
