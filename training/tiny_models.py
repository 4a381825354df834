"""Briefly trained tiny checkpoints (a Llama policy and a token-classification scorer) for the
tests and the benchmarks (`glore bench engines` without --policy/--scorer).

Built once from scratch on generated arithmetic word problems, rendered through engines.text, and
cached on disk under a content-keyed folder so concurrent processes share one build. Part of the
product, not of tests/, so an installed `glore bench` can build them too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.text import STEP_TAG, join_steps, policy_prompt, reward_input

# The checkout (or, installed, site-packages): engines/ and training/ lie under it either way.
ROOT = Path(__file__).resolve().parents[1]
# Where built checkpoints live; the env var lets CI or a read-only checkout point elsewhere.
CACHE_ENV = "GLORE_TINY_MODELS_DIR"
# Bump to force a rebuild when something outside this file changes what gets built.
BUILD_VERSION = 1

# Roles laid out in the run directory, each a symlink to one of the two checkpoints.
_RUN_LAYOUT = {
    "policy": "policy",
    "refine_global": "policy",
    "refine_local": "policy",
    "orm": "scorer",
    "sorm": "scorer",
}

_NAMES = ("Sam", "Ana", "Lee", "Mia", "Tom", "Zoe", "Raj", "Kim")
_ITEMS = ("apples", "pens", "cards", "coins", "books", "shells")


@dataclass(frozen=True)
class TinyProblem:
    """An arithmetic word problem with its reference steps (the last one states the answer)."""

    question: str
    steps: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class TinyCheckpoints:
    """Built checkpoints: a causal-LM policy, a 2-label token-classification scorer, a run dir."""

    policy: Path
    scorer: Path
    run_dir: Path


def tiny_problems(n: int, seed: int, *, max_ops: int = 5) -> list[TinyProblem]:
    """`n` problems of 1..max_ops operations (2..max_ops+1 steps), deterministic per seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        value = rng.randint(2, 20)
        sentences = [f"{name} has {value} {item}."]
        steps = []
        for _ in range(rng.randint(1, max_ops)):
            if rng.random() < 0.5 or value < 3:
                k = rng.randint(1, 9)
                sentences.append(f"{name} gets {k} more.")
                steps.append(f"{value} + {k} = {value + k}")
                value += k
            else:
                k = rng.randint(1, min(9, value - 1))
                sentences.append(f"{name} gives away {k}.")
                steps.append(f"{value} - {k} = {value - k}")
                value -= k
        sentences.append(f"How many {item} does {name} have now?")
        steps.append(f"The answer is {value}.")
        out.append(TinyProblem(" ".join(sentences), tuple(steps), str(value)))
    return out


def corrupt(problem: TinyProblem, rng: random.Random) -> tuple[tuple[str, ...], int]:
    """A wrong solution (one step's result changed, carried through) and its first bad index."""
    bad = rng.randrange(len(problem.steps) - 1)
    steps = list(problem.steps)
    offset = rng.choice((-2, -1, 1, 2, 3))
    for i in range(bad, len(steps) - 1):
        lhs, result = steps[i].rsplit(" = ", 1)
        if i > bad:
            # Later steps start from the wrong running value.
            first, op, k = lhs.split(" ")
            lhs = f"{int(first) + offset} {op} {k}"
        steps[i] = f"{lhs} = {int(result) + offset}"
    final = int(problem.answer) + offset
    steps[-1] = f"The answer is {final}."
    return tuple(steps), bad


def cache_root() -> Path:
    """$GLORE_TINY_MODELS_DIR; else .tmp/tiny-models in a checkout, the user's cache installed."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    if (ROOT / "pyproject.toml").is_file():
        default = ROOT / ".tmp" / "tiny-models"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        default = (Path(xdg) if xdg else Path.home() / ".cache") / "glore" / "tiny-models"
    try:
        default.mkdir(parents=True, exist_ok=True)
        return default
    except OSError:
        return Path(tempfile.gettempdir()) / "glore-tiny-models"


def content_key() -> str:
    """Hash of what decides the build: this file, the text contract and the tokenizer."""
    h = hashlib.sha256(f"v{BUILD_VERSION}".encode())
    for path in (
        Path(__file__),
        ROOT / "engines" / "text.py",
        ROOT / "training" / "tokenizer.py",
    ):
        h.update(path.read_bytes())
    import transformers

    h.update(transformers.__version__.encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive file lock on `path` (created with its folder), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _checkpoints(folder: Path) -> TinyCheckpoints:
    return TinyCheckpoints(folder / "policy", folder / "scorer", folder / "run")


def build_tiny_checkpoints(
    cache_dir: Path | None = None, *, verbose: bool = True
) -> TinyCheckpoints:
    """The tiny checkpoints, built on first use (≈1 min on 2 threads) and reused afterwards.

    Safe under concurrent processes: one builds under a file lock into a scratch folder and
    renames it into place; the others wait on the lock and then find it done.
    """
    root = cache_dir or cache_root()
    key = content_key()
    final = root / key
    if (final / "DONE").exists():
        return _checkpoints(final)
    with locked(root / f"{key}.lock"):
        if (final / "DONE").exists():
            return _checkpoints(final)
        scratch = Path(tempfile.mkdtemp(prefix=f"{key}.build-", dir=root))
        try:
            _build(scratch, verbose=verbose)
            if final.exists():  # a half-built leftover from a killed process
                shutil.rmtree(final)
            os.rename(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return _checkpoints(final)


def _build(out: Path, *, verbose: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

    from training.tokenizer import build_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    started = time.monotonic()
    try:
        train = tiny_problems(2000, seed=1)
        rng = random.Random(2)
        corpus = [policy_prompt(p.question) + join_steps(p.steps) for p in train[:500]]
        corpus += [reward_input(p.question, p.steps) for p in train[:200]]
        tokenizer = build_tokenizer(corpus, vocab_size=400)

        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,  # head_dim 32: supported by vLLM's CPU attention
            num_key_value_heads=2,
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

        torch.manual_seed(0)
        policy = LlamaForCausalLM(config)
        texts = [
            policy_prompt(p.question) + join_steps(p.steps) + tokenizer.eos_token for p in train
        ]
        _train(policy, tokenizer, texts, None, steps=400, label="policy", verbose=verbose)
        _save(policy, tokenizer, out / "policy")

        torch.manual_seed(0)
        scorer = LlamaForTokenClassification(
            config.__class__(**{**config.to_dict(), "num_labels": 2})
        )
        step_tag_id = tokenizer.convert_tokens_to_ids(STEP_TAG)
        texts, step_labels = [], []
        for p in train:
            if rng.random() < 0.5:
                steps, labels = p.steps, [1] * len(p.steps)
            else:
                steps, bad = corrupt(p, rng)
                labels = [1] * bad + [0] * (len(steps) - bad)
            texts.append(reward_input(p.question, steps))
            step_labels.append(labels)
        _train(
            scorer,
            tokenizer,
            texts,
            (step_tag_id, step_labels),
            steps=300,
            label="scorer",
            verbose=verbose,
        )
        _save(scorer, tokenizer, out / "scorer")

        run = out / "run"
        run.mkdir()
        for role, target in _RUN_LAYOUT.items():
            (run / role).symlink_to(Path("..") / target, target_is_directory=True)
        manifest = {
            "name": "tiny-test",
            "status": "complete",
            "built_by": "training.tiny_models",
            "key": out.name.split(".")[0],
            "seconds": round(time.monotonic() - started, 1),
        }
        (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (out / "DONE").write_text(json.dumps(manifest))
    finally:
        torch.set_num_threads(threads)


def _train(
    model: object,
    tokenizer: object,
    texts: Sequence[str],
    step_labels: tuple[int, list[list[int]]] | None,
    *,
    steps: int,
    label: str,
    verbose: bool,
) -> None:
    """A few hundred AdamW steps: LM loss for the policy, step-tag labels for the scorer."""
    import torch
    from tqdm import tqdm

    model.train()  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)  # type: ignore[attr-defined]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 30) * (1 - s / steps)
    )
    rng = random.Random(3)
    batch_size = 32
    for _ in tqdm(range(steps), desc=f"tiny {label}", disable=not verbose, leave=False):
        idx = rng.sample(range(len(texts)), batch_size)
        enc = tokenizer(  # type: ignore[operator]
            [texts[i] for i in idx], return_tensors="pt", padding=True, padding_side="right"
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        if step_labels is None:
            labels = ids.masked_fill(mask == 0, -100)
        else:
            tag_id, per_text = step_labels
            labels = torch.full_like(ids, -100)
            for row, i in enumerate(idx):
                positions = (ids[row] == tag_id).nonzero().flatten()
                labels[row, positions] = torch.tensor(per_text[i])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # type: ignore[operator]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    if verbose:
        print(f"tiny {label}: final loss {loss.item():.3f}")
    model.eval()  # type: ignore[attr-defined]


def _save(model: object, tokenizer: object, path: Path) -> None:
    model.save_pretrained(str(path), safe_serialization=True)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(str(path))  # type: ignore[attr-defined]


if __name__ == "__main__":
    t0 = time.monotonic()
    ckpt = build_tiny_checkpoints()
    print(f"{ckpt} in {time.monotonic() - t0:.1f}s")
