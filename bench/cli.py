"""`glore bench`: engines (HF vs vLLM throughput, one-pass scoring, micro-batching), the live
service (latency, overhead, batching, cold start, memory), a soak (load) and a full run against
its refiners-as-adapters twin (adapters)."""

from __future__ import annotations

import argparse
import importlib

# Benchmarks whose arguments live in their own module (add_arguments / run), imported lazily.
MODULES = {
    "service": ("bench.service", "a live server: latency, overhead, batching, cold start, memory"),
    "load": ("bench.load", "a soak of a live server: RSS and latency over many requests"),
    "orchestrator": (
        "bench.orchestrator",
        "a replica with every role remote on vLLM servers: cold start, RSS, no torch",
    ),
    "cold-start": (
        "bench.cold_start",
        "a live server's cold start, engines loading one after another against together",
    ),
    "adapters": (
        "bench.adapters",
        "a full run against the same run with refiners as LoRA adapters: accuracy, cold start, "
        "peak RSS, throughput",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="bench",
        metavar="{engines,service,load,orchestrator,cold-start,adapters}",
        required=True,
    )
    p = sub.add_parser(
        "engines",
        help="generation tokens/s (HF, vLLM), one-pass vs per-prefix scoring, micro-batching",
        description="Measure the engines on one checkpoint pair and write "
        "reports/bench-engines.json and reports/bench-engines.md.",
    )
    p.add_argument(
        "--policy", help="causal-LM checkpoint (default: models/tiny/policy, else a test one)"
    )
    p.add_argument(
        "--scorer",
        help="token-classification checkpoint (default: models/tiny/sorm, else a test one)",
    )
    p.add_argument("--out", default="reports", help="folder for the reports (default: reports)")
    p.add_argument(
        "--backends", default="hf,vllm", help="comma-separated backends (default: hf,vllm)"
    )
    p.add_argument(
        "--batches", default="1,8,64", help="comma-separated batch sizes (default: 1,8,64)"
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="per generation (default 64)")
    p.add_argument("--device", default="auto", help="HF device: auto, cpu, cuda (default auto)")
    p.add_argument("--dtype", default="float32", help="both backends (default float32)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for HF (default 1: on a small shared CPU, threads of tiny ops "
        "wait on each other)",
    )
    p.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="repeat each measurement until it has run this long (default 2)",
    )
    p.add_argument("--callers", type=int, default=16, help="concurrent callers (default 16)")
    p.add_argument(
        "--vllm-kv-cache-gib", type=float, default=1, help="vLLM KV cache (GiB, default 1)"
    )
    for name, (module, help_text) in MODULES.items():
        importlib.import_module(module).add_arguments(
            sub.add_parser(name, help=help_text, description=help_text)
        )


def run(args: argparse.Namespace) -> int:
    if args.bench == "engines":
        from bench.engines import run_engines_bench

        return run_engines_bench(args)
    return int(importlib.import_module(MODULES[args.bench][0]).run(args))
