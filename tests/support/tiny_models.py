"""The tiny checkpoints the tests share: built by the product's factory (training.tiny_models),
which the benchmarks use too; re-exported here so the tests keep one short import."""

from training.tiny_models import (
    CACHE_ENV,
    TinyCheckpoints,
    TinyProblem,
    build_tiny_checkpoints,
    cache_root,
    corrupt,
    tiny_problems,
)

__all__ = [
    "CACHE_ENV",
    "TinyCheckpoints",
    "TinyProblem",
    "build_tiny_checkpoints",
    "cache_root",
    "corrupt",
    "tiny_problems",
]
