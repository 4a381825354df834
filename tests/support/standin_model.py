"""The stand-in base model (training.standin) for the real-model path's tests, built once and
cached beside the tiny checkpoints under a content-keyed folder (GLORE_TINY_MODELS_DIR)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from training.tiny_models import cache_root, locked

ROOT = Path(__file__).resolve().parents[2]
# Where CI (and this project's workspace) keeps GSM8K; elsewhere GLORE_GSM8K_DIR points to it.
GSM8K_DIR = Path(os.environ.get("GLORE_GSM8K_DIR") or ROOT.parent / "shared" / "data" / "gsm8k")


def standin_key() -> str:
    import transformers

    h = hashlib.sha256((ROOT / "training" / "standin.py").read_bytes())
    h.update(transformers.__version__.encode())
    h.update((GSM8K_DIR / "train.jsonl").read_bytes())
    return h.hexdigest()[:16]


def build_standin_model(cache_dir: Path | None = None) -> Path:
    """The stand-in's model directory, built on first use (under a file lock) and reused."""
    from training.standin import build_standin

    root = cache_dir or cache_root()
    final = root / f"standin-{standin_key()}"
    if (final / "standin.json").exists():
        return final
    with locked(root / f"{final.name}.lock"):
        if (final / "standin.json").exists():
            return final
        scratch = Path(tempfile.mkdtemp(prefix=f"{final.name}.build-", dir=root))
        try:
            build_standin(GSM8K_DIR, scratch / "model", verbose=False)
            if final.exists():
                shutil.rmtree(final)
            os.rename(scratch / "model", final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final
