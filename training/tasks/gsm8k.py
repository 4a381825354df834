"""Load GSM8K-format JSONL (`question`, `answer` with `<<a*b=c>>` annotations and `#### N`) into
`Problem`s, so users bring real data through the same type as the synthetic task.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.text import answer_step, normalize_number
from training.tasks.checker import stated_result
from training.tasks.types import Problem, Source

log = logging.getLogger(__name__)

_ANNOTATION = re.compile(r"<<([^<>]*)>>")


@dataclass(frozen=True)
class SkippedLine:
    line: int
    reason: str


@dataclass(frozen=True)
class GSM8KLoad:
    """What `read_gsm8k` found: the problems, and the lines it skipped (non-strict mode)."""

    problems: list[Problem]
    skipped: tuple[SkippedLine, ...]


def parse_gsm8k_record(record: Any, pid: str) -> Problem:
    """One GSM8K record as a `Problem`; a malformed one raises ValueError naming the field.

    Steps are the answer's lines before "#### N" with the `<<...>>` annotations removed, then
    `answer_step(N)`. A step's value is the result of its line's last annotation ("=" ... ">>"),
    None where the line has none, it is not a number, or the line's text does not state it as
    its result (see `checker.stated_result`).
    """
    if not isinstance(record, dict):
        raise ValueError(f"record must be a JSON object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise ValueError(f"missing field {key!r}")
        if not isinstance(record[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(record[key]).__name__}")
        if not record[key].strip():
            raise ValueError(f"field {key!r} is empty")
    body, sep, tail = record["answer"].rpartition("####")
    if not sep:
        raise ValueError("field 'answer' has no '#### N' final answer")
    answer = normalize_number(tail)
    if answer is None:
        raise ValueError(f"field 'answer' has a non-numeric final answer {tail.strip()!r}")
    steps: list[str] = []
    values: list[str | None] = []
    for raw in body.split("\n"):
        annotations = _ANNOTATION.findall(raw)
        text = " ".join(_ANNOTATION.sub("", raw).split())
        if not text:
            continue
        value = None
        if annotations and "=" in annotations[-1]:
            value = normalize_number(annotations[-1].rsplit("=", 1)[1])
            # Keep only values the line itself states as its result, so the checker (which
            # reads a step's result from its text) accepts every reference step.
            if value is not None and stated_result(text) != value:
                value = None
        steps.append(text)
        values.append(value)
    return Problem(
        id=pid,
        question=record["question"].strip(),
        steps=(*steps, answer_step(answer)),
        answer=answer,
        step_values=(*values, None),
        source=Source.GSM8K.value,
    )


def read_gsm8k(path: str | Path, *, strict: bool = True, name: str | None = None) -> GSM8KLoad:
    """Read a GSM8K JSONL file. Strict: the first malformed line raises ValueError naming the
    file, the line and the field. Not strict: malformed lines are skipped and reported.

    Ids are `gsm8k-<name>-<line>` (1-based line; `name` defaults to the file's stem). Blank
    lines are ignored.
    """
    path = Path(path)
    stem = name or path.stem
    problems: list[Problem] = []
    skipped: list[SkippedLine] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"invalid JSON ({e.msg})") from e
                problems.append(parse_gsm8k_record(record, f"gsm8k-{stem}-{lineno}"))
            except ValueError as e:
                if strict:
                    raise ValueError(f"{path}:{lineno}: {e}") from e
                skipped.append(SkippedLine(line=lineno, reason=str(e)))
    if skipped:
        log.warning("%s: skipped %d malformed lines (first: line %d: %s)",
                    path, len(skipped), skipped[0].line, skipped[0].reason)  # fmt: skip
    return GSM8KLoad(problems=problems, skipped=tuple(skipped))


def load_gsm8k(path: str | Path, *, strict: bool = True) -> list[Problem]:
    """The problems of a GSM8K JSONL file (see `read_gsm8k` for errors and skipped lines)."""
    return read_gsm8k(path, strict=strict).problems


def load_gsm8k_hub(name: str, split: str, *, config: str | None = None) -> list[Problem]:
    """One split of GSM8K read through `datasets.load_dataset(name, config, split=split)`.

    `name` is a hub id (openai/gsm8k, config main) where the hub is reachable, or a local
    folder that `datasets` reads itself (train.jsonl and test.jsonl become the two splits).
    Records go through `parse_gsm8k_record`, so a malformed one raises ValueError naming the
    dataset, the split, the row and the field. Ids are `gsm8k-<split>-<row>` (1-based), the ids
    `read_gsm8k` gives the same files.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a base install has it (pyproject)
        raise ValueError("data.hub: needs the `datasets` package (pip install datasets)") from exc
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the library raises many types: missing, offline, bad config
        raise ValueError(f"data.hub: cannot load {name!r} split {split!r}: {exc}") from exc
    problems = []
    for i, record in enumerate(rows, start=1):
        try:
            problems.append(parse_gsm8k_record(record, f"gsm8k-{split}-{i}"))
        except ValueError as e:
            raise ValueError(f"{name} ({split}) row {i}: {e}") from e
    return problems
