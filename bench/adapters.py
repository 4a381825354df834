"""`glore bench adapters`: a full run against the same run with its refiners trained as LoRA
adapters of the policy (`refiners.adapters=true`), on the same questions.

Accuracy comes from one `glore eval` report per run (same split, same questions; the per-question
records give a paired count). Cold start to /ready, peak RSS of the server's process tree and
throughput come from live `glore serve` processes, the two runs started back to back (in
alternating order when `--rounds` > 1) so that both see the same machine load.

Writes reports/bench-adapters.json and reports/bench-adapters.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.live import Deployment
from engines.backends import backend_names

RUNS = ("full", "adapters")
# The eval methods compared (report.json -> how.methods), in the order shown.
METHODS = ("greedy", "global_only", "local_only", "glore", "best_of_3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", type=Path, required=True, help="the run with full refiners")
    parser.add_argument(
        "--adapters", type=Path, required=True, help="the same run, refiners as LoRA adapters"
    )
    parser.add_argument(
        "--full-eval", type=Path, default=None, help="`glore eval` report.json of --full"
    )
    parser.add_argument(
        "--adapters-eval",
        type=Path,
        default=None,
        help="`glore eval` report.json of --adapters (same split and --n as --full-eval)",
    )
    parser.add_argument(
        "--backends",
        default="hf",
        help="comma-separated backends, each of every role, or GENERATORS+SCORERS such as "
        "vllm+hf (the ORM and SORM on transformers) (default: hf)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports"), help="default: reports")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated (default 1,16)")
    parser.add_argument(
        "--requests",
        type=int,
        default=16,
        help="requests per strategy at concurrency 1; higher levels send max(this, 4 x level)",
    )
    parser.add_argument(
        "--strategies",
        default="greedy,glore_always",
        help="comma-separated strategies of `glore bench service` (default greedy,glore_always)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="per generation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--seed", type=int, default=0, help="question and sampling seed")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="servers started per run and backend, the order of the runs alternating",
    )
    parser.add_argument(
        "--engine-options",
        default=None,
        help="JSON engine options for every role (default: as `glore bench service`)",
    )
    parser.add_argument(
        "--serving-from",
        type=Path,
        default=None,
        help="a bench-adapters.json whose serving figures to keep: start no server, only read "
        "the eval reports again (an evaluation finished after the servers were measured)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        report = bench_adapters(args)
    except (FileNotFoundError, RuntimeError, TimeoutError, ValueError) as exc:
        print(f"glore bench adapters: {exc}", file=sys.stderr)
        return 1
    paths = write_report(report, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


# ---------------------------------------------------------------- the runs


def _adapter_run(run_dir: Path) -> dict[str, Any]:
    """What the manifest and folders say about a run's refiners: adapters or full checkpoints,
    the recorded {base, adapter} per refiner, their size on disk and training time."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stage = manifest.get("stages", {}).get("refiners", {})
    refiners = {}
    for role in ("refine_global", "refine_local"):
        folder = run_dir / role
        refiners[role] = {
            "adapter": (folder / "adapter_config.json").is_file()
            and not (folder / "config.json").is_file(),
            "mib_on_disk": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20,
        }
    return {
        "stages_done": all(s.get("status") == "done" for s in manifest.get("stages", {}).values()),
        "refiners": refiners,
        "serving": stage.get("serving"),
        "refiners_train_s": stage.get("seconds"),
    }


def engine_count(run_dir: Path, where: Deployment) -> list[list[str]]:
    """The engines the server loads for the run: the roles each one serves."""
    from engines.registry import engine_groups

    groups = engine_groups(where.specs(run_dir))
    return [[r.value for r in g] for g in groups]


def _session(
    run_dir: Path,
    env: dict[str, str],
    strategies: list[str],
    counts: dict[int, int],
    qs: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One `glore serve` of a run: cold start, RSS, and each strategy's throughput per level."""
    import asyncio

    from bench.live import LiveServer
    from bench.service import load_level, payload

    load_before = os.getloadavg()
    with LiveServer(run_dir, env) as server:
        out: dict[str, Any] = {
            "cold_start_s": server.cold_start_s,
            "rss_ready_mib": server.rss() / 2**20,
            "strategies": {},
        }
        for strategy in strategies:
            warm = [
                payload(strategy, qs[i], 10_000 + i, args.max_new_tokens, args.seed)
                for i in range(4)
            ]
            asyncio.run(load_level(server.url, warm, 4))
            out["strategies"][strategy] = {}
            for c, n in counts.items():
                bodies = [
                    payload(strategy, qs[i], i, args.max_new_tokens, args.seed) for i in range(n)
                ]
                figures, _ = asyncio.run(load_level(server.url, bodies, c))
                out["strategies"][strategy][str(c)] = figures
        out["peak_rss_mib"] = server.peak_rss / 2**20
    out["loadavg_before"] = load_before
    out["loadavg_after"] = os.getloadavg()
    return out


def bench_adapters(args: argparse.Namespace) -> dict[str, Any]:
    from bench.service import STRATEGIES, _host, engine_options, questions, relative_path

    if args.serving_from is not None:
        kept: dict[str, Any] = json.loads(args.serving_from.read_text())
        kept["accuracy"] = accuracy(args.full_eval, args.adapters_eval)
        return kept

    runs = {"full": args.full, "adapters": args.adapters}
    for name, path in runs.items():
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"--{name} {path}: no manifest.json (not a trained run)")
    runs = {k: v.resolve() for k, v in runs.items()}
    given = engine_options(args.engine_options)
    deployments = [
        Deployment.parse(b.strip(), given) for b in args.backends.split(",") if b.strip()
    ]
    if not deployments:
        raise ValueError(f"--backends: expected {backend_names()} or GENERATORS+SCORERS")
    backends = [d.label for d in deployments]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency: expected positive integers, got {args.concurrency!r}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or not strategies:
        raise ValueError(f"--strategies: unknown {sorted(unknown)}; choose from {list(STRATEGIES)}")
    if args.rounds < 1:
        raise ValueError("--rounds: at least 1")
    counts = {c: max(args.requests, 4 * c) for c in levels}
    qs = questions(max(counts.values()), args.seed)

    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": {k: {"path": relative_path(v)} | _adapter_run(v) for k, v in runs.items()},
        "settings": {
            "backends": backends,
            "levels": levels,
            "requests": {str(c): n for c, n in counts.items()},
            "strategies": {k: STRATEGIES[k] for k in strategies},
            "max_new_tokens": args.max_new_tokens,
            "server_threads": args.threads,
            "seed": args.seed,
            "rounds": args.rounds,
        },
        "host": _host() | {"loadavg_before": os.getloadavg()},
        "backends": {},
    }
    for where in deployments:
        backend = where.label
        env = {
            "OMP_NUM_THREADS": str(args.threads),
            "GLORE_LOG_LEVEL": "WARNING",
            "GLORE_LIMITS__MAX_IN_FLIGHT": str(max(64, 2 * max(levels))),
            "GLORE_LIMITS__MAX_NEW_TOKENS": str(max(1024, args.max_new_tokens)),
        } | where.env()
        sessions: dict[str, list[dict[str, Any]]] = {k: [] for k in RUNS}
        for r in range(args.rounds):
            order = RUNS if r % 2 == 0 else RUNS[::-1]
            for name in order:
                print(
                    f"glore bench adapters: {backend}, {name} run, round {r + 1}", file=sys.stderr
                )
                session = _session(runs[name], env, strategies, counts, qs, args)
                sessions[name].append(session | {"order": order.index(name)})
        report["backends"][backend] = {
            "engine_options": dict(where.generator_options),
            "scorer_engine_options": dict(where.scorer_options),
            "engines": {k: engine_count(runs[k], where) for k in RUNS},
            "sessions": sessions,
            "summary": {k: summarise_sessions(v) for k, v in sessions.items()},
        }
    report["host"]["loadavg_after"] = os.getloadavg()
    # Read last: an evaluation may still be writing its report while the servers are measured.
    report["accuracy"] = accuracy(args.full_eval, args.adapters_eval)
    return report


# ---------------------------------------------------------------- figures


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarise_sessions(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures over its sessions: median cold start and throughput, largest peak RSS."""
    strategies = sessions[0]["strategies"]
    return {
        "cold_start_s": _median([s["cold_start_s"] for s in sessions]),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in sessions),
        "rss_ready_mib": _median([s["rss_ready_mib"] for s in sessions]),
        "throughput_rps": {
            strategy: {
                c: _median([s["strategies"][strategy][c]["throughput_rps"] for s in sessions])
                for c in per
            }
            for strategy, per in strategies.items()
        },
        "latency_p50_s": {
            strategy: {
                c: _median([s["strategies"][strategy][c]["latency_s"]["p50"] for s in sessions])
                for c in per
            }
            for strategy, per in strategies.items()
        },
        "errors_5xx": sum(
            n
            for s in sessions
            for per in s["strategies"].values()
            for lvl in per.values()
            for code, n in lvl["statuses"].items()
            if code.startswith("5")
        ),
    }


def _records(report_path: Path) -> dict[str, dict[str, bool]]:
    """problem_id -> {method: correct} from the records.jsonl beside an eval report."""
    path = report_path.with_name("records.jsonl")
    out: dict[str, dict[str, bool]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        out[str(record["problem_id"])] = {
            m: bool(v.get("correct")) for m, v in record.get("methods", {}).items()
        }
    return out


def accuracy(full: Path | None, adapters: Path | None) -> dict[str, Any]:
    """Each method's accuracy (with its 95% interval) in both eval reports, and, when their
    records cover the same questions, a paired count per method: right in one run only."""
    if full is None or adapters is None:
        return {"measured": False, "note": "not measured: pass --full-eval and --adapters-eval"}
    missing = [str(p) for p in (full, adapters) if not p.is_file()]
    if missing:
        return {"measured": False, "note": f"not measured: no eval report at {', '.join(missing)}"}
    from bench.service import relative_path

    reports = {k: json.loads(p.read_text()) for k, p in (("full", full), ("adapters", adapters))}
    out: dict[str, Any] = {
        "measured": True,
        "sources": {"full": relative_path(full), "adapters": relative_path(adapters)},
        "meta": {
            k: {m: r.get("meta", {}).get(m) for m in ("split", "n_test", "seed", "backend")}
            for k, r in reports.items()
        },
        "methods": {},
        # Each refiner's fixes and breaks of the drafts it rewrote (how.refiners).
        "refiners": {k: r.get("how", {}).get("refiners") for k, r in reports.items()},
    }
    for method in METHODS:
        row = {}
        for k, r in reports.items():
            entry = r.get("how", {}).get("methods", {}).get(method)
            if entry is not None:
                row[k] = {"value": entry["accuracy"]["value"], "ci95": entry["accuracy"]["ci95"]}
        if len(row) == 2:
            row["difference"] = row["adapters"]["value"] - row["full"]["value"]
            out["methods"][method] = row
    records = {"full": _records(full), "adapters": _records(adapters)}
    same = bool(records["full"]) and set(records["full"]) == set(records["adapters"])
    out["same_questions"] = same
    if same:
        for method, row in out["methods"].items():
            pairs = [
                (records["full"][q].get(method), records["adapters"][q].get(method))
                for q in records["full"]
            ]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            row["paired"] = {
                "questions": len(pairs),
                "both_right": sum(a and b for a, b in pairs),
                "full_only": sum(a and not b for a, b in pairs),
                "adapters_only": sum(b and not a for a, b in pairs),
                "both_wrong": sum(not a and not b for a, b in pairs),
            }
    return out


# ---------------------------------------------------------------- the report


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench-adapters.json", out / "bench-adapters.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    return paths


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


def markdown(r: dict[str, Any]) -> str:
    from bench.service import _sharing

    h, s = r["host"], r["settings"]
    lines = [
        "# Refiners as adapters against full refiners",
        "",
        f"- when: {r['created']}; full run `{r['runs']['full']['path']}`, adapter run "
        f"`{r['runs']['adapters']['path']}` (the same recipe, refiners trained with "
        "`refiners.adapters=true`)",
        f"- host: {h['cpu']}, {h['cpu_count']} cores, {_sharing(h)} (load average "
        f"{h['loadavg_before'][0]:.1f} before, {h['loadavg_after'][0]:.1f} after); torch "
        f"{h['torch']}, vLLM {h['vllm']}",
        f"- servers: one `glore serve` per run and backend, started back to back "
        f"({s['rounds']} round(s), order alternating); torch threads {s['server_threads']}; "
        f"max_new_tokens {s['max_new_tokens']}; requests per level {s['requests']}",
        "",
    ]
    for name in RUNS:
        run = r["runs"][name]
        kinds = ", ".join(
            f"{role} {'adapter' if v['adapter'] else 'full'} {v['mib_on_disk']:.1f} MiB"
            for role, v in run["refiners"].items()
        )
        train = run.get("refiners_train_s")
        lines.append(
            f"- {name}: refiners {kinds}"
            + (f"; refiners stage {train:.0f} s" if isinstance(train, int | float) else "")
        )
    lines.append("")
    acc = r["accuracy"]
    lines += ["## Accuracy", ""]
    if acc["measured"]:
        meta = acc["meta"]["full"]
        lines += [
            f"`glore eval`, split {meta['split']}, {meta['n_test']} questions, seed "
            f"{meta['seed']}, backend {meta['backend']} (reports: `{acc['sources']['full']}`, "
            f"`{acc['sources']['adapters']}`); same questions in both: "
            f"{'yes' if acc['same_questions'] else 'no'}.",
            "",
            "| method | full | adapters | difference | right in full only | right in adapters "
            "only |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, row in acc["methods"].items():
            paired = row.get("paired", {})
            lines.append(
                f"| {method} | {row['full']['value']:.3f} | {row['adapters']['value']:.3f} | "
                f"{row['difference']:+.3f} | {paired.get('full_only', '–')} | "
                f"{paired.get('adapters_only', '–')} |"
            )
        for name in ("global", "local"):
            cells = []
            for k in RUNS:
                f = (acc.get("refiners", {}).get(k) or {}).get(name)
                if f:
                    cells.append(
                        f"{k} fixes {f['fixed']} of {f['wrong_drafts']} wrong drafts, breaks "
                        f"{f['broken']} of {f['right_drafts']} right ones"
                    )
            if cells:
                lines += ["", f"- {name} refiner: " + "; ".join(cells)]
    else:
        lines.append(acc["note"])
    for backend, b in r["backends"].items():
        sm = b["summary"]
        full, ada = sm["full"], sm["adapters"]
        lines += [
            "",
            f"## Serving: {backend}",
            "",
            "| figure | full | adapters | adapters ÷ full |",
            "|---|---:|---:|---:|",
            f"| engines loaded | {len(b['engines']['full'])} | {len(b['engines']['adapters'])} | |",
            f"| cold start to /ready (s) | {full['cold_start_s']:.1f} | "
            f"{ada['cold_start_s']:.1f} | {_ratio(ada['cold_start_s'], full['cold_start_s'])} |",
            f"| peak RSS, process tree (MiB) | {full['peak_rss_mib']:.0f} | "
            f"{ada['peak_rss_mib']:.0f} | {_ratio(ada['peak_rss_mib'], full['peak_rss_mib'])} |",
            f"| RSS when ready (MiB) | {full['rss_ready_mib']:.0f} | "
            f"{ada['rss_ready_mib']:.0f} | {_ratio(ada['rss_ready_mib'], full['rss_ready_mib'])} |",
        ]
        for strategy, per in full["throughput_rps"].items():
            for c, v in per.items():
                a = ada["throughput_rps"][strategy][c]
                lines.append(
                    f"| {strategy} requests/s, concurrency {c} | {v:.2f} | {a:.2f} | "
                    f"{_ratio(a, v)} |"
                )
        lines.append(f"| 5xx | {full['errors_5xx']} | {ada['errors_5xx']} | |")
        lines += [
            "",
            "Engines (roles each serves): "
            + "; ".join(f"{k}: " + ", ".join("+".join(g) for g in b["engines"][k]) for k in RUNS),
        ]
        loads = [
            f"{k} round {i + 1}: {x['loadavg_before'][0]:.1f} → {x['loadavg_after'][0]:.1f}"
            for k in RUNS
            for i, x in enumerate(b["sessions"][k])
        ]
        lines.append("Load average (1 min) around each server: " + "; ".join(loads) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="glore bench adapters")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
