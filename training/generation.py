"""Sampling from checkpoints through the engines layer, from synchronous training code.

Every rollout (drafts, V* continuations, evaluation) goes through `engines.registry`, so training
samples exactly as the service does, and either backend (hf, vllm) can do the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from engines.backends import backend_row
from engines.base import (
    Completion,
    EngineSpec,
    Generator,
    Role,
    SamplingParams,
    Scorer,
    ScoreRequest,
    StepScores,
)
from engines.registry import load_engine


def engine_spec(path: str | Path, backend: str, max_batch_size: int) -> EngineSpec:
    """One checkpoint on `backend`, batching at most `max_batch_size` sequences at a time (the
    option each backend names in its row: the HF micro-batcher's `max_batch_size`, vLLM's
    `max_num_seqs`)."""
    key = backend_row(backend).batch_size_option
    return EngineSpec(path=str(path), backend=backend, options={key: max_batch_size})


def load_generator(role: Role, spec: EngineSpec) -> Generator:
    engine = load_engine(role, spec)
    assert isinstance(engine, Generator)
    return engine


def load_scorer(role: Role, spec: EngineSpec) -> Scorer:
    engine = load_engine(role, spec)
    assert isinstance(engine, Scorer)
    return engine


_LOOP: asyncio.AbstractEventLoop | None = None


def run_async(coro: Any) -> Any:
    """Run a coroutine on this process's one event loop.

    Engines may bind batching queues to the loop they first ran on, so training reuses one loop
    rather than `asyncio.run` (a new loop per call).
    """
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
    return _LOOP.run_until_complete(coro)


def close(engine: Any) -> None:
    run_async(engine.close())


def generate(
    gen: Generator,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    chunk: int = 64,
    desc: str = "sampling",
    show: bool = True,
) -> list[list[Completion]]:
    """`params.n` completions per prompt, in order, with a progress bar over prompts."""
    out: list[list[Completion]] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show)

    async def go() -> None:
        for start in range(0, len(prompts), chunk):
            part = list(prompts[start : start + chunk])
            out.extend(await gen.generate(part, params))
            bar.update(len(part))

    run_async(go())
    bar.close()
    return out


def score(
    scorer: Scorer, requests: Sequence[ScoreRequest], *, chunk: int = 128, desc: str = "scoring"
) -> list[StepScores]:
    out: list[StepScores] = []
    bar = tqdm(total=len(requests), desc=desc, unit="draft")

    async def go() -> None:
        for start in range(0, len(requests), chunk):
            part = list(requests[start : start + chunk])
            out.extend(await scorer.score(part))
            bar.update(len(part))

    run_async(go())
    bar.close()
    return out
