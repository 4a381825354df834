"""Rerankers: how the pipeline orders candidate solutions of one question.

A reranker is a named linear scorer over a candidate's readings: the ORM's outcome logit and the
policy's own token log-probabilities of the solution. The paper's reranker is the ORM alone
(`ORM_RERANKER`). A learned reranker (fitted by training.reranker from outcome-labelled policy
samples only, with a pairwise loss inside each question) is saved in a run as JSON and loaded
here, so training, evaluation and the service all rank with the same numbers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import StepScores, TokenLogprobs

# Where a run keeps its rerankers: <run>/reranker/default.json and <run>/reranker/<name>.json.
RERANKER_DIR = "reranker"
DEFAULT_FILE = "default.json"
_EPS = 1e-6


@dataclass(frozen=True)
class Readings:
    """What is known of one candidate when it is ranked (None: not read). `kind` is who wrote
    it: `draft` (the policy's greedy draft), `global` or `local` (a refiner), `sample` (a
    sampled policy solution)."""

    orm: StepScores | None
    logprobs: TokenLogprobs | None = None
    kind: str = "sample"


def _orm_logit(r: Readings) -> float:
    p = min(max(r.orm.outcome_prob if r.orm else 0.0, _EPS), 1 - _EPS)
    return math.log(p / (1 - p))


def _needs_lp(fn: Callable[[TokenLogprobs], float]) -> Callable[[Readings], float]:
    def read(r: Readings) -> float:
        if r.logprobs is None:
            raise ValueError("this reranker reads the policy's log-probabilities; none were read")
        return fn(r.logprobs)

    return read


def _low_share(lp: TokenLogprobs) -> float:
    """The share of tokens the policy gave less than even odds: where slips hide."""
    if not lp.logprobs:
        return 0.0
    return sum(x < math.log(0.5) for x in lp.logprobs) / len(lp.logprobs)


def _kind(kind: str) -> Callable[[Readings], float]:
    """1 for a candidate written by `kind`, else 0. The policy's likelihood favours its own
    greedy draft (every token is its argmax, slips included) over a refiner's rewrite; a weight
    on who wrote a candidate lets a fitted reranker take that bias out."""

    def read(r: Readings) -> float:
        return 1.0 if r.kind == kind else 0.0

    return read


# Every feature a reranker may weigh, by name, and whether it needs the policy's log-probs.
FEATURES: dict[str, Callable[[Readings], float]] = {
    "kind_global": _kind("global"),
    "kind_local": _kind("local"),
    "orm_logit": _orm_logit,
    "lp_mean": _needs_lp(lambda lp: lp.mean),
    "lp_min": _needs_lp(lambda lp: lp.min),
    "lp_sum": _needs_lp(lambda lp: sum(lp.logprobs)),
    "lp_low_share": _needs_lp(_low_share),
}
LOGPROB_FEATURES = frozenset(name for name in FEATURES if name.startswith("lp_"))


def feature_values(readings: Readings, names: Sequence[str]) -> list[float]:
    return [FEATURES[n](readings) for n in names]


@dataclass(frozen=True)
class Reranker:
    """score = sum_i weights[i] * (feature_i - center[i]) / scale[i]; higher ranks first.

    Only the order of scores inside one question matters, so the score is not a probability.
    """

    name: str
    features: tuple[str, ...]
    weights: tuple[float, ...]
    center: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    description: str = ""
    # How it was made (training data, pairs, held-out pairwise accuracy), for the manifest.
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"features: unknown {unknown}; known: {sorted(FEATURES)}")
        n = len(self.features)
        if n == 0 or len(self.weights) != n:
            raise ValueError(f"weights: need one per feature ({n}), got {len(self.weights)}")
        for name in ("center", "scale"):
            value = getattr(self, name)
            if value and len(value) != n:
                raise ValueError(f"{name}: need one per feature ({n}), got {len(value)}")
        if any(s <= 0 for s in self.scale):
            raise ValueError("scale: every entry must be positive")

    @property
    def needs_logprobs(self) -> bool:
        """Whether ranking with it reads the policy's token log-probabilities (one pass each)."""
        return any(f in LOGPROB_FEATURES for f in self.features)

    def score(self, readings: Readings) -> float:
        """The ranking score of one candidate; -inf for a candidate the ORM could not read
        (no steps: it states no answer)."""
        if readings.orm is None:
            return -math.inf
        return self.score_features(feature_values(readings, self.features))

    def score_features(self, values: Sequence[float]) -> float:
        center = self.center or (0.0,) * len(values)
        scale = self.scale or (1.0,) * len(values)
        return sum(
            w * (v - c) / s for w, v, c, s in zip(self.weights, values, center, scale, strict=True)
        )

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "features": list(self.features),
            "weights": list(self.weights),
            "center": list(self.center),
            "scale": list(self.scale),
            "description": self.description,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reranker:
        try:
            return cls(
                name=str(d["name"]),
                features=tuple(str(f) for f in d["features"]),
                weights=tuple(float(w) for w in d["weights"]),
                center=tuple(float(c) for c in d.get("center") or ()),
                scale=tuple(float(s) for s in d.get("scale") or ()),
                description=str(d.get("description", "")),
                meta=dict(d.get("meta") or {}),
            )
        except KeyError as exc:
            raise ValueError(f"reranker file lacks {exc.args[0]!r}") from None

    def save(self, path: Path) -> None:
        """Written atomically: a reader sees the old file or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Reranker:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read reranker {path}: {exc}") from exc
        return cls.from_dict(data)


# The paper's reranker: the ORM's outcome score (its logit orders candidates the same way).
ORM_RERANKER = Reranker(
    "orm", ("orm_logit",), (1.0,), description="the ORM's outcome score (the paper's reranker)"
)
# The untrained likelihood baseline: the policy's mean token log-probability of the solution.
POLICY_LIKELIHOOD = Reranker(
    "policy_mean_logprob",
    ("lp_mean",),
    (1.0,),
    description="the policy's mean token log-probability of the solution, untrained",
)
BUILTIN: dict[str, Reranker] = {r.name: r for r in (ORM_RERANKER, POLICY_LIKELIHOOD)}


def run_rerankers(run_dir: Path) -> dict[str, Reranker]:
    """Every reranker a run saved (by name), the built-in ones included."""
    out = dict(BUILTIN)
    folder = Path(run_dir) / RERANKER_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            if path.name != DEFAULT_FILE and not path.name.startswith("."):
                r = Reranker.load(path)
                out[r.name] = r
    return out


def default_reranker(run_dir: Path | None) -> Reranker:
    """The reranker a run chose on its dev set (<run>/reranker/default.json), else the ORM."""
    if run_dir is None:
        return ORM_RERANKER
    path = Path(run_dir) / RERANKER_DIR / DEFAULT_FILE
    return Reranker.load(path) if path.exists() else ORM_RERANKER


def resolve_reranker(spec: str, run_dir: Path | None) -> Reranker:
    """`default` (the run's choice), a built-in or saved name, or a path to a reranker JSON."""
    if spec == "default":
        return default_reranker(run_dir)
    known = run_rerankers(run_dir) if run_dir is not None else dict(BUILTIN)
    if spec in known:
        return known[spec]
    if Path(spec).is_file():
        return Reranker.load(Path(spec))
    raise ValueError(f"reranker: unknown {spec!r}; known: default, {', '.join(sorted(known))}")
