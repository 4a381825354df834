"""The machinery of a training graph: stage specs, the run directory, its manifest and the runner.

It knows no stage by name. A stage is a `StageSpec` (training.stages declares them, one module
each); everything the runner does for a stage (the inputs hash that says when it is stale, the
outputs that say it is done, its seed, its lines in the manifest's summary) it reads from the spec.
Every stage reads its inputs from the run directory and writes its outputs there, so each one runs
alone, a rerun skips finished stages, and `manifest.json` records what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoTokenizer

from engines.base import Role
from engines.text import text_fingerprint
from training.config import RunConfig
from training.modeling import is_checkpoint, save_adapter, save_checkpoint
from training.tasks import Problem, load_problems
from training.trainer import accelerator, stage_session

# Where an unfinished stage keeps its training loops' checkpoints, per stage (removed when done).
RESUME_DIR = ".resume"

# A stage's report: `counts`, `metrics`, `hashes` (content hashes of its outputs, which make the
# stages downstream stale when they change) and anything else, merged into its manifest entry.
Report = dict[str, Any]


def _no_summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class StageSpec:
    """One stage of the graph: what it depends on, what it makes and how to run it."""

    name: str
    """The stage's name: on the command line, in the manifest, and the source of its seed."""
    sections: tuple[str, ...]
    """The config sections its output depends on itself; the upstream stages' are added."""
    upstream: tuple[str, ...]
    """The stages whose outputs it reads: a new content hash there makes it stale."""
    outputs: tuple[Role | str, ...]
    """What must exist for it to count as done: a role's checkpoint, or a path in the run."""
    run: Callable[[Run, int], Report]
    """Runs the stage in a run directory with its own seed; returns its report."""
    summary: Callable[[dict[str, Any]], dict[str, Any]] = _no_summary
    """Its headline figures for the manifest's `summary`, from its manifest entry (maybe empty)."""
    resumes_from: tuple[str, ...] = ()
    """Folders of partial work it resumes from after a crash; removed when its inputs changed or
    it is forced, so no shard of another policy or recipe is taken up."""


def stage_seed(base: int, stage: str) -> int:
    """The seed of one stage: the run's seed plus an offset derived from the stage's name, so
    every stage draws from its own stream and adding or reordering stages moves no other's."""
    return base + int(hashlib.sha256(f"glore-stage:{stage}".encode()).hexdigest()[:6], 16)


def dig(node: Any, *path: str) -> Any:
    """`node[path[0]][path[1]]...`, or None where a key is missing (a stage not run yet)."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def dir_hash(path: Path, pattern: str = "*") -> str:
    """A content hash of a folder's files (names and bytes), in name order."""
    h = hashlib.sha256()
    for p in sorted(path.glob(pattern)):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.name.encode())
            h.update(file_hash(p).encode())
    return h.hexdigest()[:16]


def checkpoint_hash(path: Path) -> str:
    return dir_hash(path, "*.safetensors")


# -------------------------------------------------------------------- the graph


class Graph:
    """Stage specs in run order, checked once: unique names, upstream stages declared before
    the stages that read them, and one root (the first stage, with no upstream) that every run
    starts with."""

    def __init__(self, specs: Sequence[StageSpec]) -> None:
        self.specs = tuple(specs)
        if not self.specs or self.specs[0].upstream:
            raise ValueError("the first stage is the root: it must have no upstream")
        self.by_name: dict[str, StageSpec] = {}
        for spec in self.specs:
            if spec.name in self.by_name:
                raise ValueError(f"stage {spec.name!r} is declared twice")
            unknown = [u for u in spec.upstream if u not in self.by_name]
            if unknown:
                raise ValueError(f"stage {spec.name!r}: upstream {unknown} not declared before it")
            self.by_name[spec.name] = spec

    @property
    def root(self) -> StageSpec:
        return self.specs[0]

    def __getitem__(self, name: str) -> StageSpec:
        try:
            return self.by_name[name]
        except KeyError:
            raise ValueError(f"unknown stage {name!r} (known: {', '.join(self.by_name)})") from None

    def sections(self, name: str) -> tuple[str, ...]:
        """Every config section a stage's output depends on: its own and all its upstream's."""
        spec = self[name]
        seen = dict.fromkeys(spec.sections)
        for u in spec.upstream:
            seen.update(dict.fromkeys(self.sections(u)))
        return tuple(seen)

    def all_sections(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for spec in self.specs for s in spec.sections))


def inputs_hash(graph: Graph, cfg: RunConfig, manifest: Manifest, stage: str) -> str:
    """The stage's config sections plus the content hashes of the upstream outputs it reads."""
    d = cfg.hashed_dict()
    upstream = {u: manifest.stage(u).get("hashes") for u in graph[stage].upstream}
    blob = json.dumps(
        {
            "config": {n: d[n] for n in graph.sections(stage)},
            "upstream": upstream,
            "text_contract": text_fingerprint(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finished(graph: Graph, run: Run, manifest: Manifest, stage: str) -> bool:
    """Whether `stage` is done under its current inputs, with its outputs in place: what lets a
    rerun skip it (and a reader use it without running anything)."""
    entry = manifest.stage(stage)
    return (
        entry.get("status") == "done"
        and entry.get("config_hash") == inputs_hash(graph, run.cfg, manifest, stage)
        and outputs_exist(graph, run, stage)
    )


def outputs_exist(graph: Graph, run: Run, stage: str) -> bool:
    return all(
        is_checkpoint(run.checkpoint(o)) if isinstance(o, Role) else (run.out / o).exists()
        for o in graph[stage].outputs
    )


def summary(graph: Graph, stages: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a run, gathered from the stages that have finished."""
    out: dict[str, Any] = {}
    for spec in graph.specs:
        out.update(spec.summary(stages.get(spec.name) or {}))
    return out


# -------------------------------------------------------------------- run directory


@dataclass
class Manifest:
    """`runs/NAME/manifest.json`: one entry per stage, rewritten atomically after each change."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, cfg: RunConfig) -> Manifest:
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("name", cfg.name)
        data.setdefault("created", _now())
        data.setdefault("stages", {})
        data["seed"] = cfg.seed
        return cls(path, data)

    def stage(self, stage: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(str(stage), {"status": "pending"})

    def save(self) -> None:
        self.data["updated"] = _now()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


class Run:
    """A run directory and the things every stage needs from it (lazily loaded, cached)."""

    def __init__(self, cfg: RunConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self._splits: dict[str, list[Problem]] = {}
        self._tokenizer: Any = None
        self.acc = accelerator()

    # ---------------------------------------------------------------- paths

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def rollouts_dir(self) -> Path:
        return self.out / "rollouts"

    @property
    def tokenizer_dir(self) -> Path:
        return self.out / "tokenizer"

    def checkpoint(self, role: Role) -> Path:
        return self.out / str(role)

    # ---------------------------------------------------------------- inputs

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            path = self.data_dir / f"{split}.jsonl"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run `glore train policy` first")
            self._splits[split] = load_problems(path)
        return self._splits[split]

    def problems_by_id(self) -> dict[str, Problem]:
        return {p.id: p for split in ("train", "val", "test") for p in self.problems(split)}

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir))
        return self._tokenizer

    def require(self, role: Role) -> Path:
        path = self.checkpoint(role)
        if not is_checkpoint(path):
            raise FileNotFoundError(f"{path} is missing: run the stage that trains {role} first")
        return path

    def base_model(self) -> str:
        """`model.base`, for a stage whose `init` is base (from scratch there is none)."""
        if self.cfg.model.base is None:
            raise ValueError("init: 'base' needs model.base; from scratch, start from the policy")
        return self.cfg.model.base

    # ---------------------------------------------------------------- outputs

    def save_model(
        self, model: Any, role: Role, metrics: dict[str, Any], *, adapter_of: Role | None = None
    ) -> Path:
        """The checkpoint, with the resolved recipe and its metrics beside it (main process).
        With `adapter_of`, only the LoRA adapter is saved, unmerged, over that role's folder."""
        path = self.checkpoint(role)
        if self.acc.is_main_process:
            if adapter_of is None:
                save_checkpoint(model, self.tokenizer(), path)
            else:
                save_adapter(model, self.tokenizer(), path, base=f"../{adapter_of}")
            (path / "recipe.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            (path / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        self.acc.wait_for_everyone()
        return path

    def update_metrics(self, role: Role, extra: dict[str, Any]) -> None:
        path = self.checkpoint(role) / "metrics.json"
        if self.acc.is_main_process:
            data = json.loads(path.read_text())
            data.update(extra)
            path.write_text(json.dumps(data, indent=2, default=str) + "\n")

    def say(self, message: str) -> None:
        """One line per stage event, from the main process only."""
        if self.acc.is_main_process:
            print(f"[glore train] {message}", flush=True)


# -------------------------------------------------------------------- the runner


def run_graph(
    graph: Graph, cfg: RunConfig, out: Path, stages: Sequence[str], *, force: bool = False
) -> Manifest:
    """Run `stages` in order (the graph's root first when missing), skipping finished ones.

    A stage counts as finished when the manifest says so, its outputs exist and its inputs'
    config hash is unchanged; `force` reruns the named stages regardless.
    """
    names = [graph[s].name for s in stages]
    torch.set_num_threads(max(1, cfg.threads))
    run = Run(cfg, out)
    manifest = Manifest.open(out / "manifest.json", cfg)
    if run.acc.is_main_process:
        (out / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    manifest.data["config_hash"] = cfg.section_hash(*graph.all_sections())
    manifest.data["processes"] = run.acc.num_processes
    manifest.data["text_fingerprint"] = text_fingerprint()
    for name in [graph.root.name, *names]:
        spec, entry = graph[name], manifest.stage(name)
        forced = force and name in names
        inputs = inputs_hash(graph, cfg, manifest, name)
        if finished(graph, run, manifest, name) and not forced:
            run.say(f"{name}: done earlier, skipped")
            continue
        resume_dir = out / RESUME_DIR / name  # the trainer's checkpoints (trainer.stage_session)
        if entry.get("config_hash") != inputs or forced:
            for folder in (*spec.resumes_from, resume_dir):  # another input's partial work
                if (out / folder).exists():
                    shutil.rmtree(out / folder)
        run.say(f"{name}: starting")
        seed = stage_seed(cfg.seed, name)
        entry.clear()
        entry.update(
            status="running",
            started=_now(),
            seed=seed,
            config_hash=inputs,
            text_fingerprint=text_fingerprint(),
        )
        if run.acc.is_main_process:
            manifest.save()
        start = time.perf_counter()
        try:
            with stage_session(resume_dir) as session:
                report = spec.run(run, seed)
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            entry["seconds"] = round(time.perf_counter() - start, 1)
            if run.acc.is_main_process:
                manifest.save()
            raise
        entry.update(report)
        if session.results:  # training throughput of each loop the stage ran
            entry["train_tokens_per_second"] = session.throughput()
            entry["train_seconds"] = {k: round(r.seconds, 1) for k, r in session.results.items()}
        entry.update(status="done", finished=_now(), seconds=round(time.perf_counter() - start, 1))
        if run.acc.is_main_process and resume_dir.exists():
            shutil.rmtree(resume_dir)
        if run.acc.is_main_process:
            manifest.save()
        run.say(f"{name}: done in {entry['seconds']:.1f}s")
    total = sum(
        e.get("seconds", 0) for e in manifest.data["stages"].values() if e.get("status") == "done"
    )
    manifest.data["total_seconds"] = round(total, 1)
    manifest.data["summary"] = summary(graph, manifest.data["stages"])
    manifest.data["host"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # others' work slows timings too
    }
    if run.acc.is_main_process:
        manifest.save()
    return manifest
