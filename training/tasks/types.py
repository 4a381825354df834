"""The in-memory types of the task: a `Problem` with its exact ground truth, and `TaskConfig`,
the difficulty knobs of the synthetic generator (with named presets for YAML recipes).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from engines.text import answer_step, join_steps, normalize_number


class Operation(StrEnum):
    """The four operations of a synthetic step, as written in reference solutions."""

    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"

    def apply(self, a: int, b: int) -> int | None:
        """The exact integer result, or None when division does not come out even."""
        if self is Operation.ADD:
            return a + b
        if self is Operation.SUB:
            return a - b
        if self is Operation.MUL:
            return a * b
        if b == 0 or a % b:
            return None
        return a // b

    @property
    def commutative(self) -> bool:
        return self in (Operation.ADD, Operation.MUL)


class Source(StrEnum):
    SYNTHETIC = "synthetic"
    GSM8K = "gsm8k"


def _tuple_of(value: Any, name: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"Problem.{name} must be a list, got {type(value).__name__}")
    return tuple(value)


@dataclass(frozen=True)
class Problem:
    """One word problem with its reference solution and the ground truth of every step.

    `steps[-1]` is always `answer_step(answer)`. For each step `i`, `step_values[i]` is its exact
    (normalised) result, `step_ops[i]` its operation and `step_operands[i]` its two operands; all
    three are None where unknown (the closing answer step; GSM8K steps have values only).
    """

    id: str
    question: str
    steps: tuple[str, ...]
    answer: str
    step_values: tuple[str | None, ...]
    source: str
    step_ops: tuple[str | None, ...] = ()
    step_operands: tuple[tuple[str, str] | None, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("Problem.id must be a non-empty string")
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"Problem {self.id}: question must be a non-empty string")
        if not isinstance(self.answer, str) or normalize_number(self.answer) != self.answer:
            raise ValueError(
                f"Problem {self.id}: answer must be a normalised number, got {self.answer!r}"
            )
        if self.source not in tuple(Source):
            raise ValueError(f"Problem {self.id}: source must be one of {list(Source)}")
        steps = _tuple_of(self.steps, "steps")
        if not steps or any(not isinstance(s, str) or not s.strip() for s in steps):
            raise ValueError(f"Problem {self.id}: steps must be non-empty strings, at least one")
        join_steps(steps)  # single-line steps only
        if steps[-1] != answer_step(self.answer):
            raise ValueError(
                f"Problem {self.id}: the last step must be {answer_step(self.answer)!r}, "
                f"got {steps[-1]!r}"
            )
        n = len(steps)
        values = _tuple_of(self.step_values, "step_values")
        ops = _tuple_of(self.step_ops, "step_ops") or (None,) * n
        operands = _tuple_of(self.step_operands, "step_operands") or (None,) * n
        for name, column in (
            ("step_values", values),
            ("step_ops", ops),
            ("step_operands", operands),
        ):
            if len(column) != n:
                raise ValueError(
                    f"Problem {self.id}: {name} has {len(column)} entries for {n} steps"
                )
        for v in values:
            if v is not None and normalize_number(str(v)) != v:
                raise ValueError(f"Problem {self.id}: step_values holds a non-normalised {v!r}")
        for op in ops:
            if op is not None and op not in tuple(Operation):
                raise ValueError(f"Problem {self.id}: step_ops holds unknown operation {op!r}")
        pairs = tuple(None if p is None else tuple(str(x) for x in p) for p in operands)
        if any(p is not None and len(p) != 2 for p in pairs):
            raise ValueError(f"Problem {self.id}: step_operands entries must be pairs")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "step_values", values)
        object.__setattr__(self, "step_ops", ops)
        object.__setattr__(self, "step_operands", pairs)

    @property
    def solution(self) -> str:
        return join_steps(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "steps": list(self.steps),
            "answer": self.answer,
            "step_values": list(self.step_values),
            "source": self.source,
            "step_ops": list(self.step_ops),
            "step_operands": [None if p is None else list(p) for p in self.step_operands],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Problem:
        """Inverse of `to_dict`; a missing or ill-typed field raises ValueError naming it."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a Problem record must be a JSON object, got {type(d).__name__}")
        required = ("id", "question", "steps", "answer", "step_values", "source")
        for key in required:
            if key not in d:
                raise ValueError(f"Problem record is missing the field {key!r}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"Problem record has unknown fields {sorted(unknown)}")
        return cls(
            id=d["id"],
            question=d["question"],
            steps=_tuple_of(d["steps"], "steps"),
            answer=d["answer"],
            step_values=_tuple_of(d["step_values"], "step_values"),
            source=d["source"],
            step_ops=_tuple_of(d.get("step_ops", []), "step_ops"),
            step_operands=tuple(
                None if p is None else tuple(_tuple_of(p, "step_operands"))
                for p in _tuple_of(d.get("step_operands", []), "step_operands")
            ),
        )


def save_problems(problems: Iterable[Problem], path: str | Path) -> int:
    """Write problems as JSONL (one `to_dict` per line); returns how many were written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def load_problems(path: str | Path) -> list[Problem]:
    """Read a file written by `save_problems`; a bad line raises ValueError naming its number."""
    out: list[Problem] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(Problem.from_dict(json.loads(line)))
            except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{lineno}: {e}") from e
    return out


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the synthetic generator.

    A problem has `min_steps..max_steps` arithmetic steps (plus the closing answer step). The
    first quantity lies in `start_min..start_max`; + and − use constants in `add_min..add_max`,
    × factors in `mul_min..mul_max`, ÷ divisors in `div_min..div_max` (exact results only).
    No intermediate value exceeds `max_value`, and none drops below 2 unless `allow_negative`.
    `derive_prob` is the chance a step introduces a new person ("Mia has 3 more than Tom"),
    `combine_prob` the chance it combines two earlier values ("as many as Tom and Mia
    together"); other steps update the current person. `n_templates`, `n_names` and `n_objects`
    bound the phrasing variety (fewer = a smaller vocabulary for tiny models).

    `family` "basic" is the generator above; "wide" (`training.tasks.wide`) says the same
    chains of steps with hundreds of names and objects, pronouns, synonyms, reordered and
    combined clauses, and ignores the three `n_*` bounds. Its own knobs: `pronoun_prob` (a
    pronoun where the last sentence makes it clear), `clause_prob` (two updates in one
    sentence), `total_prob` (the question asks for two people's total) and `group_prob` (the
    opening is groups: "3 boxes of 12"). `part` picks what the words and phrasings come from:
    "train" (the default), or a part training never sees, for measuring generalisation:
    "heldout_names" (held-out names and objects), "heldout_templates" (held-out phrasings) or
    "made_up" (made-up names and objects from the held-out part of `words.made_up_name`).
    `pseudo_share` (wide only): the share of training problems whose names and object are
    made-up words instead (`make_splits` leaves them out of the test and validation splits, which
    stay in the everyday words people write).
    In the basic family the held-out parts are the names, objects and templates past
    `n_names`, `n_objects` and `n_templates`.
    """

    name: str = "custom"
    min_steps: int = 2
    max_steps: int = 4
    start_min: int = 2
    start_max: int = 20
    add_min: int = 2
    add_max: int = 10
    mul_min: int = 2
    mul_max: int = 3
    div_min: int = 2
    div_max: int = 4
    max_value: int = 100
    operations: tuple[str, ...] = ("+", "-", "*")
    derive_prob: float = 0.3
    combine_prob: float = 0.2
    n_templates: int = 3
    n_names: int = 30
    n_objects: int = 16
    allow_negative: bool = False
    family: str = "basic"
    part: str = "train"
    pronoun_prob: float = 0.5
    clause_prob: float = 0.25
    total_prob: float = 0.2
    group_prob: float = 0.15
    pseudo_share: float = 0.0

    # The divisor phrasing ("a third as many") has words for 2..10 only.
    MAX_DIVISOR: ClassVar[int] = 10

    def __post_init__(self) -> None:
        ops = self.operations
        if isinstance(ops, str) or not isinstance(ops, list | tuple):
            raise ValueError("TaskConfig.operations must be a list of '+', '-', '*', '/'")
        ops = tuple(_OP_ALIASES.get(str(o), str(o)) for o in ops)
        bad = [o for o in ops if o not in tuple(Operation)]
        if bad or not ops:
            raise ValueError(
                f"TaskConfig.operations must be a non-empty subset of + - * /, got {list(ops)}"
            )
        object.__setattr__(self, "operations", tuple(dict.fromkeys(ops)))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"TaskConfig.{f.name} must be an integer, got {value!r}")
        for lo, hi, floor in (
            ("min_steps", "max_steps", 1),
            ("start_min", "start_max", 2),
            ("add_min", "add_max", 1),
            ("mul_min", "mul_max", 2),
            ("div_min", "div_max", 2),
        ):
            a, b = getattr(self, lo), getattr(self, hi)
            if a < floor:
                raise ValueError(f"TaskConfig.{lo} must be at least {floor}, got {a}")
            if b < a:
                raise ValueError(f"TaskConfig.{hi} ({b}) must be >= {lo} ({a})")
        if self.div_max > self.MAX_DIVISOR:
            raise ValueError(f"TaskConfig.div_max must be at most {self.MAX_DIVISOR}")
        if self.max_value < self.start_max:
            raise ValueError(
                f"TaskConfig.max_value ({self.max_value}) must be >= start_max ({self.start_max})"
            )
        self._check_probabilities("derive_prob", "combine_prob")
        if self.family not in FAMILIES:
            raise ValueError(
                f"TaskConfig.family must be one of {list(FAMILIES)}, got {self.family!r}"
            )
        if self.part not in TASK_PARTS:
            raise ValueError(
                f"TaskConfig.part must be one of {list(TASK_PARTS)}, got {self.part!r}"
            )
        self._check_probabilities(
            "pronoun_prob", "clause_prob", "total_prob", "group_prob", "pseudo_share"
        )
        if self.pseudo_share and self.family != "wide":
            raise ValueError("TaskConfig.pseudo_share needs family 'wide' (made-up words)")
        for key, floor in (("n_templates", 1), ("n_names", 2), ("n_objects", 1)):
            if getattr(self, key) < floor:
                raise ValueError(f"TaskConfig.{key} must be at least {floor}")

    def _check_probabilities(self, *names: str) -> None:
        for p in names:
            value = getattr(self, p)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"TaskConfig.{p} must be a probability in [0, 1], got {value!r}")

    # ------------------------------------------------------------ presets

    @classmethod
    def tiny(cls) -> TaskConfig:
        """2-3 steps of +, − and ×2/×3 on small numbers: learnable by a ~1M model on a CPU."""
        return cls(
            name="tiny",
            min_steps=2,
            max_steps=3,
            start_min=2,
            start_max=12,
            add_min=2,
            add_max=9,
            mul_min=2,
            mul_max=3,
            max_value=60,
            operations=("+", "-", "*"),
            derive_prob=0.3,
            combine_prob=0.1,
            n_templates=3,
            n_names=10,
            n_objects=6,
        )

    @classmethod
    def easy(cls) -> TaskConfig:
        """2-4 steps of +, − and ×2/×3, numbers up to 100."""
        return cls(
            name="easy",
            min_steps=2,
            max_steps=4,
            start_min=2,
            start_max=20,
            add_min=2,
            add_max=12,
            mul_min=2,
            mul_max=3,
            max_value=100,
            operations=("+", "-", "*"),
            derive_prob=0.3,
            combine_prob=0.2,
            n_templates=4,
            n_names=20,
            n_objects=10,
        )

    @classmethod
    def medium(cls) -> TaskConfig:
        """3-5 steps of all four operations, numbers up to 200."""
        return cls(
            name="medium",
            min_steps=3,
            max_steps=5,
            start_min=2,
            start_max=30,
            add_min=2,
            add_max=20,
            mul_min=2,
            mul_max=4,
            div_min=2,
            div_max=4,
            max_value=200,
            operations=("+", "-", "*", "/"),
            derive_prob=0.3,
            combine_prob=0.25,
            n_templates=4,
        )

    @classmethod
    def hard(cls) -> TaskConfig:
        """4-6 steps of all four operations, numbers up to 500, more combining of values."""
        return cls(
            name="hard",
            min_steps=4,
            max_steps=6,
            start_min=5,
            start_max=50,
            add_min=2,
            add_max=40,
            mul_min=2,
            mul_max=6,
            div_min=2,
            div_max=6,
            max_value=500,
            operations=("+", "-", "*", "/"),
            derive_prob=0.3,
            combine_prob=0.3,
            n_templates=4,
        )

    @classmethod
    def wide(cls) -> TaskConfig:
        """The tiny preset's steps (plus halves and thirds), said the many ways people say them:
        the wide family over hundreds of names and objects."""
        return cls(
            name="wide",
            family="wide",
            min_steps=2,
            max_steps=3,
            start_min=2,
            start_max=12,
            add_min=2,
            add_max=9,
            mul_min=2,
            mul_max=3,
            div_min=2,
            div_max=3,
            max_value=60,
            operations=("+", "-", "*", "/"),
            derive_prob=0.3,
            combine_prob=0.1,
        )

    def held_out(self, part: str) -> TaskConfig:
        """This config, drawing from `part` of the generator (see the class docstring)."""
        return dataclasses.replace(self, part=part)

    @classmethod
    def preset(cls, name: str) -> TaskConfig:
        try:
            return PRESETS[name]()
        except KeyError:
            raise ValueError(
                f"unknown task preset {name!r}; choose from {sorted(PRESETS)}"
            ) from None

    # ------------------------------------------------------------ YAML round trip

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["operations"] = list(self.operations)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TaskConfig:
        """Build from a recipe mapping. `preset: easy` starts from a preset; other keys override.

        Unknown keys raise ValueError naming them, so a typo in a recipe never goes unnoticed.
        """
        d = dict(d or {})
        preset = d.pop("preset", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TaskConfig fields {unknown}; known: {sorted(known)}")
        base = cls.preset(preset).to_dict() if preset is not None else {}
        if preset is not None and "name" not in d:
            base["name"] = preset
        base.update(d)
        if "operations" in base and isinstance(base["operations"], list):
            base["operations"] = tuple(base["operations"])
        return cls(**base)


FAMILIES = ("basic", "wide")
# The training part, and the held-out parts a generalisation evaluation draws from.
TASK_PARTS = ("train", "heldout_names", "heldout_templates", "made_up")

_OP_ALIASES = {"x": "*", "×": "*", "÷": "/", "−": "-"}

PRESETS: dict[str, Callable[[], TaskConfig]] = {
    "tiny": TaskConfig.tiny,
    "easy": TaskConfig.easy,
    "medium": TaskConfig.medium,
    "hard": TaskConfig.hard,
    "wide": TaskConfig.wide,
}

__all__ = [
    "PRESETS",
    "Operation",
    "Problem",
    "Source",
    "TaskConfig",
    "load_problems",
    "save_problems",
]
