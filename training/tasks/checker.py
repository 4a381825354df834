"""The exact step checker: labels each step of a candidate solution against a problem's ground
truth, so step-level accuracy (and V*, the "prefix still correct" label) is measured, not estimated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engines.text import answers_match, extract_answer, normalize_number, split_steps
from training.tasks.types import Operation, Problem

# A number as a person or a model writes it: "$1,234", "12", "-3", "2.5", "−4".
_NUM = r"[-−]?(?:\$\s?)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_OPS = {
    "+": Operation.ADD,
    "-": Operation.SUB,
    "−": Operation.SUB,
    "–": Operation.SUB,
    "*": Operation.MUL,
    "x": Operation.MUL,
    "X": Operation.MUL,
    "×": Operation.MUL,
    "·": Operation.MUL,
    "/": Operation.DIV,
    "÷": Operation.DIV,
}
# `a op b = c`; the operator class lists "-" last so it is a literal.
_EQUATION = re.compile(rf"(?<![\w.])({_NUM})\s*([+*xX×·/÷−–-])\s*({_NUM})\s*=\s*({_NUM})(?![\d])")
_RESULT = re.compile(rf"=\s*({_NUM})")
_NUMBER = re.compile(rf"(?<![\w.])({_NUM})(?![\d])")


@dataclass(frozen=True)
class Equation:
    """One parsed `a op b = c`, each number normalised."""

    a: str
    op: Operation
    b: str
    c: str


def parse_equations(step: str) -> list[Equation]:
    """Every `a op b = c` in a step, in order. Words around them are ignored."""
    out = []
    for m in _EQUATION.finditer(step):
        a, b, c = (normalize_number(m.group(i)) for i in (1, 3, 4))
        if a is None or b is None or c is None:
            continue
        out.append(Equation(a=a, op=_OPS[m.group(2)], b=b, c=c))
    return out


def stated_result(step: str) -> str | None:
    """The value a step computes: the number after its last "=", else the last number it states
    ("... because 2 times 5 equals 10"), else None."""
    matches = list(_RESULT.finditer(step)) or list(_NUMBER.finditer(step))
    return normalize_number(matches[-1].group(1)) if matches else None


def uses_result(step: str, continuation: Sequence[str]) -> bool:
    """The paper's consistency check on a V* continuation: does it use the value `step` states?

    A continuation that reaches the right answer without the prefix's intermediate result (it
    recomputed around a wrong step, or guessed) does not show that the prefix was on track. A
    step that states no number has nothing to check, so any continuation uses it.
    """
    value = stated_result(step)
    if value is None:
        return True
    for later in continuation:
        if any(normalize_number(m.group(1)) == value for m in _NUMBER.finditer(later)):
            return True
    return False


@dataclass(frozen=True)
class StepCheck:
    """The verdict on a candidate solution, one entry per candidate step."""

    step_ok: tuple[bool, ...]
    prefix_ok: tuple[bool, ...]
    first_error: int | None
    answer: str | None
    answer_correct: bool
    n_reference: int = 0  # steps in the reference solution, closing answer step included

    @property
    def complete(self) -> bool:
        """The candidate has exactly as many steps as the reference."""
        return len(self.step_ok) == self.n_reference

    @property
    def fully_correct(self) -> bool:
        """Every step ok, none missing or extra, and the right final answer."""
        return self.complete and self.first_error is None and self.answer_correct


def _candidate_steps(candidate: str | Sequence[str]) -> list[str]:
    if isinstance(candidate, str):
        return split_steps(candidate)
    if not isinstance(candidate, Sequence):
        raise TypeError(
            f"candidate must be a solution string or a sequence of steps, "
            f"got {type(candidate).__name__}"
        )
    steps = []
    for i, step in enumerate(candidate):
        if not isinstance(step, str):
            raise TypeError(f"candidate step {i} must be a string, got {type(step).__name__}")
        steps.append(step.strip())
    return steps


def _equation_ok(problem: Problem, i: int, step: str) -> bool:
    op, operands = problem.step_ops[i], problem.step_operands[i]
    value = problem.step_values[i]
    if op is None or operands is None or value is None:
        return False
    equations = parse_equations(step)
    if len(equations) != 1:
        return False
    eq = equations[0]
    want_op = Operation(op)
    if eq.op is not want_op or eq.c != value:
        return False
    if want_op.commutative:
        return sorted((eq.a, eq.b)) == sorted(operands)
    return (eq.a, eq.b) == operands


def _step_ok(problem: Problem, i: int, step: str) -> bool:
    n_ref = len(problem.steps)
    if i >= n_ref:
        return False  # an extra step is never right
    if i == n_ref - 1:
        return answers_match(extract_answer(step), problem.answer)
    if problem.step_operands[i] is not None:
        return _equation_ok(problem, i, step)
    value = problem.step_values[i]
    if value is None:
        return True  # an unannotated GSM8K step: nothing to check it against
    return stated_result(step) == value


def check_solution(problem: Problem, candidate: str | Sequence[str]) -> StepCheck:
    """Label every step of `candidate` (a solution string, or its steps) against `problem`.

    Candidate step `i` is judged against reference step `i`:
    - Reference step with known operands (synthetic problems): ok iff the candidate step holds
      exactly one equation `a op b = c` (words around it, "x"/"*"/"×", "/"/"÷", "−", commas and
      "$" are tolerated) whose operation is the reference operation, whose operands are the
      reference operands (in either order for + and ×, in order for − and ÷), and whose stated
      result `c` equals the reference value. A wrong sum like "3 + 4 = 8" is therefore not ok,
      and neither is a right value reached by other operands ("12 + 12 = 24" for "12 * 2 = 24").
    - Reference step with a value but no operands (GSM8K): ok iff the candidate step's
      `stated_result` (the number after its last "=", else its last number) equals the
      reference value. GSM8K steps without a value (no annotation, or one the line does not
      state) cannot be checked and count as ok.
    - The reference's closing answer step: ok iff the candidate step states the right answer
      ("The answer is N." or "#### N").
    - A candidate step past the end of the reference is not ok.
    `prefix_ok[i]` is all(step_ok[: i + 1]); `first_error` is the first index that is not ok, or
    None. `answer` is the final answer extracted from the whole candidate and `answer_correct`
    compares it with the reference. A candidate with fewer steps than the reference can have
    first_error None yet be incomplete: see `StepCheck.complete` and `.fully_correct`. Empty
    candidates give empty tuples, first_error None, answer None and answer_correct False.
    """
    steps = _candidate_steps(candidate)
    step_ok = tuple(_step_ok(problem, i, s) for i, s in enumerate(steps))
    prefix: list[bool] = []
    for ok in step_ok:
        prefix.append(ok and (not prefix or prefix[-1]))
    first_error = next((i for i, ok in enumerate(step_ok) if not ok), None)
    answer = extract_answer("\n".join(steps))
    return StepCheck(
        step_ok=step_ok,
        prefix_ok=tuple(prefix),
        first_error=first_error,
        answer=answer,
        answer_correct=answers_match(answer, problem.answer),
        n_reference=len(problem.steps),
    )
