"""Launch `glore serve` in a child process for benchmarks: cold start to /ready, the peak resident
memory of its process tree (vLLM runs engine cores as children), and a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

_ROLES = ("POLICY", "ORM", "SORM", "REFINE_GLOBAL", "REFINE_LOCAL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Engine options a bench gives a backend unless told otherwise. vLLM's KV cache is sized to the
# tiny models (4 KiB a token: 0.25 GiB holds 65k tokens, about six times what concurrency 16
# of GLoRe needs); each engine holds its own, resident.
BENCH_OPTIONS: dict[str, dict[str, object]] = {
    "vllm": {"cpu_kvcache_space_gib": 0.25, "enforce_eager": True},
    "hf": {},
}


@dataclass(frozen=True)
class Deployment:
    """Which backend serves the generating roles (policy, refiners) and which the scorers (ORM,
    SORM), with their engine options: written `vllm`, or `vllm+hf` for vLLM generators beside
    transformers reward models (one vLLM engine for a run whose refiners are adapters)."""

    generators: str
    scorers: str
    generator_options: Mapping[str, object] = field(default_factory=dict)
    scorer_options: Mapping[str, object] = field(default_factory=dict)
    # Options of one role over its side's (lower-case role -> options): a remote role's server.
    role_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, options: Mapping[str, object] | None = None) -> Deployment:
        """`GEN` or `GEN+SCORERS`; `options` (None: BENCH_OPTIONS) go to the generators' backend,
        the scorers' takes BENCH_OPTIONS unless it is the same backend."""
        from engines.backends import backend_names

        parts = [p.strip() for p in text.split("+")]
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"--backend: expected BACKEND or GENERATORS+SCORERS, got {text!r}")
        for part in parts:
            if part not in backend_names():
                raise ValueError(f"--backend: unknown backend {part!r}; choose {backend_names()}")
        gen, scorers = parts[0], parts[-1]
        gen_options = dict(BENCH_OPTIONS.get(gen, {}) if options is None else options)
        scorer_options = gen_options if scorers == gen else dict(BENCH_OPTIONS.get(scorers, {}))
        return cls(gen, scorers, gen_options, scorer_options)

    def served_by(self, role_options: Mapping[str, Mapping[str, object]]) -> Deployment:
        """The same deployment with each named role's own options (e.g. its model server's URL
        from bench.model_servers.serve_run) over its side's."""
        from dataclasses import replace

        return replace(self, role_options={**self.role_options, **role_options})

    @property
    def remote_roles(self) -> list[str]:
        """The roles served by the `remote` backend (lower case): those needing a model server."""
        return [r.lower() for r in _ROLES if self.backend(r)[0] == "remote"]

    @property
    def label(self) -> str:
        return self.generators if self.scorers == self.generators else str(self)

    def __str__(self) -> str:
        return f"{self.generators}+{self.scorers}"

    def backend(self, role: str) -> tuple[str, Mapping[str, object]]:
        own = self.role_options.get(role.lower(), {})
        if role.lower() in ("orm", "sorm"):
            return self.scorers, {**self.scorer_options, **own}
        return self.generators, {**self.generator_options, **own}

    def env(self) -> dict[str, str]:
        """GLORE_* settings serving each role on its backend with its options."""
        import json

        env = {}
        for role in _ROLES:
            backend, options = self.backend(role)
            env[f"GLORE_{role}__BACKEND"] = backend
            if options:
                env[f"GLORE_{role}__OPTIONS"] = json.dumps(dict(options))
        return env

    def specs(self, run_dir: str | os.PathLike[str]) -> dict[Any, Any]:
        """The engine specs `glore serve` builds for the run, for in-process engines."""
        from engines.base import EngineSpec, Role

        out = {}
        for role in Role:
            backend, options = self.backend(role.value)
            out[role] = EngineSpec(str(Path(run_dir) / role.value), backend, dict(options))
        return out


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    return sum(process_rss(pid).values())


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) of a process and all its descendants so far, the children
    they have already reaped included."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def process_rss(pid: int) -> dict[str, int]:
    """Resident bytes of a process ("server") and of each descendant, by its title (vLLM names
    its engine cores and workers, e.g. VLLM::EngineCore), numbered by order of appearance
    (`VLLM::Worker#2` when the tree holds several engines)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out: dict[str, int] = {}
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        if p.pid == pid:
            out["server"] = rss
            continue
        try:
            title = (p.cmdline() or [p.name()])[0].split("/")[-1][:40]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            title = "child"
        n = 1
        while f"{title}#{n}" in out:
            n += 1
        out[f"{title}#{n}"] = rss
    return out


def rss_split(pid: int) -> tuple[int, int]:
    """Resident bytes of the process itself and of its descendants (vLLM's engine cores)."""
    import psutil

    try:
        own = psutil.Process(pid).memory_info().rss
    except psutil.NoSuchProcess:
        return 0, 0
    return own, max(0, tree_rss(pid) - own)


def spawn_serve(
    run_dir: str | Path | None,
    port: int,
    env: Mapping[str, str] | None = None,
    *,
    args: Sequence[str] = (),
    uvicorn_factory: bool = False,
    cwd: str | Path | None = None,
    log_prefix: str = "glore-server",
) -> tuple[subprocess.Popen[bytes], Path, dict[str, str]]:
    """Start `glore serve --run RUN_DIR --host 127.0.0.1 --port PORT [ARGS]` (the one launcher of
    the benchmarks and the end-to-end tests); returns the process, its log file and its env.

    `env` is added to this process's environment. With `uvicorn_factory`, run
    `uvicorn --factory glore.app:create_app` instead (as a container might), with the run
    directory passed as GLORE_RUN_DIR. Output goes to a log file, so a full pipe never blocks it.
    """
    full_env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if uvicorn_factory:
        command = [sys.executable, "-m", "uvicorn", "--factory", "glore.app:create_app"]
        if run_dir is not None:
            full_env["GLORE_RUN_DIR"] = str(run_dir)
    else:
        command = [sys.executable, "-m", "glore", "serve"]
        if run_dir is not None:
            command += ["--run", str(run_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    log_fd, log_name = tempfile.mkstemp(prefix=f"{log_prefix}-{port}-", suffix=".log")
    with os.fdopen(log_fd, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    return process, Path(log_name), full_env


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM (graceful drain), then SIGKILL after `timeout_s`; idempotent. The exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def load_breakdown(url: str, cold_start_s: float) -> dict[str, Any]:
    """A cold start split by the server's own metrics: each engine's load, the models' whole
    load, and the rest (interpreter, imports, app start, the wait for /ready's next poll)."""
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    engines = {
        m.group(1): round(float(m.group(2)), 2)
        for m in re.finditer(r'^glore_engine_load_seconds\{engine="([^"]+)"\} (\S+)$', text, re.M)
    }
    found = re.findall(r"^glore_models_load_seconds (\S+)$", text, re.M)
    models = float(found[0]) if found else None
    return {
        "engines_s": engines,
        "models_s": None if models is None else round(models, 2),
        "before_models_s": None if models is None else round(cold_start_s - models, 2),
    }


class LiveServer:
    """A `glore serve` child process; `cold_start_s` is process start to /ready 200."""

    def __init__(
        self,
        run_dir: str | Path,
        env: Mapping[str, str] | None = None,
        *,
        ready_timeout_s: float = 900,
        sample_every_s: float = 0.2,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.process, self.log_path, _ = spawn_serve(
            run_dir, self.port, env, log_prefix="glore-bench"
        )
        self.peak_rss = 0
        # Each process's own peak, by name (the server; vLLM's VLLM::EngineCore, ...).
        self.peak_by_process: dict[str, int] = {}
        self._stop_sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(sample_every_s,), daemon=True)
        self._sampler.start()
        try:
            self.cold_start_s = self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _sample(self, every_s: float) -> None:
        while not self._stop_sampling.wait(every_s):
            # One walk of the process tree a sample: its total and each process's share.
            by_process = process_rss(self.process.pid)
            self.peak_rss = max(self.peak_rss, sum(by_process.values()))
            for name, rss in by_process.items():
                self.peak_by_process[name] = max(self.peak_by_process.get(name, 0), rss)

    def _wait_ready(self, timeout_s: float) -> float:
        import httpx

        deadline = self.started + timeout_s
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"glore serve exited with {self.process.returncode} before /ready; "
                        f"log:\n{self.logs()[-3000:]}"
                    )
                try:
                    r = client.get("/ready")
                    if r.status_code == 200:
                        return time.perf_counter() - self.started
                    if "failed to load" in r.text:  # no point waiting: say why at once
                        raise RuntimeError(
                            f"glore serve could not load its models: {r.json()['error']['message']}"
                            f"; log:\n{self.logs()[-3000:]}"
                        )
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"/ready not 200 within {timeout_s} s; log:\n{self.logs()[-3000:]}")

    def rss(self) -> int:
        return tree_rss(self.process.pid)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 60) -> None:
        self._stop_sampling.set()
        stop_process(self.process, timeout_s)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
