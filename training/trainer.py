"""One training loop for every stage, in plain PyTorch with `accelerate` for multi-process runs.

SFT stages use the model's own shifted cross-entropy (labels are IGNORE on the prompt); reward
models pass `loss_fn` to read the loss at the step tags. The same code runs on one CPU or under
`accelerate launch` on N processes (gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from training.config import TrainConfig

log = logging.getLogger(__name__)

LossFn = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class TrainResult:
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last)
    dropped_too_long: int = 0

    @property
    def first_loss(self) -> float | None:
        return self.losses[0][1] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    @property
    def tokens_per_second(self) -> float | None:
        return round(self.tokens / self.seconds, 1) if self.seconds else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "examples": self.examples,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_second": self.tokens_per_second,
            "first_loss": self.first_loss,
            "final_loss": self.final_loss,
            "losses": self.losses,
            "dropped_too_long": self.dropped_too_long,
        }


@dataclass
class StageSession:
    """What the stage runner gives every training loop of one stage: where to keep resumable
    state, and a record of each loop's result (the manifest's tokens/s come from it)."""

    resume_dir: Path
    results: dict[str, TrainResult] = field(default_factory=dict)

    def checkpoint_path(self, desc: str) -> Path:
        return self.resume_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "-", desc).strip("-") + ".pt")

    def throughput(self) -> dict[str, float]:
        """Training tokens per second of each loop that ran, by its name."""
        return {
            name: r.tokens_per_second
            for name, r in self.results.items()
            if r.tokens_per_second is not None
        }


_SESSION: ContextVar[StageSession | None] = ContextVar("glore_stage_session", default=None)


@contextmanager
def stage_session(resume_dir: Path) -> Iterator[StageSession]:
    """Run a stage's training loops with checkpoints under `resume_dir` (see `train`)."""
    session = StageSession(resume_dir)
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


_ACCELERATOR: Accelerator | None = None


def accelerator() -> Accelerator:
    """The process's one Accelerator (it holds global state, so it is created once)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        _ACCELERATOR = Accelerator(cpu=not torch.cuda.is_available())
    return _ACCELERATOR


def lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def _batches(lengths: Sequence[int], batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Shuffled batches of similar length (less padding), the same for a given seed.

    Each epoch shuffles, sorts windows of 50 batches by length, and shuffles the batch order.
    """
    rng = random.Random(seed)
    n = len(lengths)
    want = max(1, math.ceil(n * epochs / batch_size))
    out: list[list[int]] = []
    while len(out) < want:
        order = list(range(n))
        rng.shuffle(order)
        window = batch_size * 50
        epoch: list[list[int]] = []
        for start in range(0, n, window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
            epoch += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch)
        out += epoch
    return out[:want]


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio * lr`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def train(
    model: Any,
    examples: Sequence[Any],
    collate: Callable[..., dict[str, torch.Tensor]],
    cfg: TrainConfig,
    *,
    pad_id: int,
    seed: int,
    desc: str,
    loss_fn: LossFn = lm_loss,
) -> tuple[Any, TrainResult]:
    """Fit `model` on `examples`; returns the unwrapped model and what happened.

    Examples longer than `cfg.max_length` tokens are dropped (and counted), not truncated: a
    truncated solution would teach the model to stop mid-answer.

    Inside a `stage_session`, the model, optimizer and progress are saved every
    `cfg.checkpoint_minutes`, and a loop that finds its checkpoint resumes from it: the batch
    order and learning-rate schedule are functions of the seed and the step, so the resumed run
    takes the same updates as one that never stopped.
    """
    acc = accelerator()
    acc.gradient_accumulation_steps = cfg.grad_accum  # accumulate() and backward() read it
    result = TrainResult()
    kept = [e for e in examples if len(e.input_ids) <= cfg.max_length]
    result.dropped_too_long = len(examples) - len(kept)
    if not kept:
        raise ValueError(f"{desc}: no training examples (of {len(examples)}) fit max_length")
    torch.manual_seed(seed)
    batches = _batches([len(e.input_ids) for e in kept], cfg.batch_size, cfg.epochs, seed)
    total = math.ceil(len(batches) / cfg.grad_accum)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    session = _SESSION.get()
    ckpt = session.checkpoint_path(desc) if session is not None else None
    saved = _load_checkpoint(ckpt, desc, total)
    step = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        step = saved["step"]
        result = TrainResult(**saved["result"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("%s: resuming at step %d of %d from %s", desc, step, total, ckpt)
    loader: DataLoader[Any] = DataLoader(
        kept,  # type: ignore[arg-type]  # a list is a map-style dataset
        batch_sampler=batches[step * cfg.grad_accum :],  # a resumed loop skips what it took
        collate_fn=partial(collate, pad_id=pad_id),
    )
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
    model, optimizer, loader = acc.prepare(model, optimizer, loader)
    model.train()
    bar = tqdm(
        total=total, initial=step, desc=desc, unit="step", disable=not acc.is_local_main_process
    )
    start = time.perf_counter() - result.seconds
    last_save = time.perf_counter()
    running, count = 0.0, 0
    for batch in loader if step < total else ():
        with acc.accumulate(model):
            loss = loss_fn(model, batch)
            acc.backward(loss)
            if acc.sync_gradients and cfg.grad_clip > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, cfg)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        count += 1
        result.examples += batch["input_ids"].shape[0]
        result.tokens += int(batch["attention_mask"].sum())
        if not acc.sync_gradients:  # mid-accumulation: no optimizer step was taken
            continue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total or step == 1:
            mean = running / count
            result.losses.append((step, round(mean, 5)))
            bar.set_postfix(loss=f"{mean:.4f}")
            running, count = 0.0, 0
        if step >= total:
            break
        if ckpt is not None and time.perf_counter() - last_save >= 60 * cfg.checkpoint_minutes:
            result.steps, result.seconds = step, time.perf_counter() - start
            if acc.is_main_process:
                _save_checkpoint(
                    ckpt, desc, total, step, acc.unwrap_model(model), optimizer, result
                )
            last_save = time.perf_counter()
    bar.close()
    result.steps = step
    result.seconds = time.perf_counter() - start
    if session is not None:
        session.results[desc] = result
    acc.wait_for_everyone()
    model = acc.unwrap_model(model)
    acc.free_memory()  # drop the accelerator's references, so stages do not pile up models
    model.eval()
    return model, result


def _save_checkpoint(
    path: Path, desc: str, total: int, step: int, model: Any, optimizer: Any, result: TrainResult
) -> None:
    """The loop's state after `step` updates, written whole or not at all (tmp, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "desc": desc,
        "total": total,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "result": {k: v for k, v in result.__dict__.items()},
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path | None, desc: str, total: int) -> dict[str, Any] | None:
    """A checkpoint of this loop (same name and length), or None to start from the beginning."""
    if path is None or not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("desc") != desc or state.get("total") != total:
        log.warning("%s: ignoring checkpoint %s of another loop", desc, path)
        return None
    return state
