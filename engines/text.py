"""The text contract between models and code: prompts per role, steps, answers, critique marker.

Training renders its data through these functions and the service queries models through them,
so a model only ever sees text in one format.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# One step separator. A solution is a sequence of non-empty, single-line steps.
STEP_SEP = "\n"
# Inserted before the first bad step of a draft, for the local refiner.
CRITIQUE_MARKER = "[BAD]"
# Appended after every step of a reward-model input; the step's score is read at this token.
STEP_TAG = "<|step|>"
# The closing step of every solution we generate: "The answer is 42."
ANSWER_PHRASE = "The answer is"

# Special tokens every tokenizer we train or serve must know (added to real base models).
SPECIAL_TOKENS: tuple[str, ...] = (STEP_TAG,)

_QUESTION = "Question: "
_ANSWER = "Answer:"
_DRAFT = "Draft:"
_REFINED = "Refined:"

_ANSWER_RE = re.compile(
    r"The answer is\s*:?\s*([-+−]?\s*\$?\s*[-+−]?[\d.,]*\d[\d.,]*)", re.IGNORECASE | re.ASCII
)
_GSM8K_RE = re.compile(r"####\s*([-+−]?\s*\$?\s*[-+−]?[\d.,]*\d[\d.,]*)", re.ASCII)
_CONTROL = {"Cc", "Cf", "Cs", "Co", "Cn"}


def _loose(literal: str) -> re.Pattern[str]:
    """`literal` in any case and with any whitespace between its characters."""
    return re.compile(r"\s*".join(re.escape(ch) for ch in literal), re.IGNORECASE)


# What a question may not carry, however it is written: [bad], [ BAD ], ［BAD］ (NFKC folds
# full-width forms first), <|STEP|>, ...
_MARKER_RE = _loose(CRITIQUE_MARKER)
_TAG_RE = _loose(STEP_TAG)


class TextContractError(ValueError):
    """Raised when text cannot be rendered into the contract (e.g. an empty question)."""


# ---------------------------------------------------------------- steps


def split_steps(solution: str) -> list[str]:
    """Split a solution into its steps: one per line, stripped, empty lines dropped."""
    return [line.strip() for line in solution.split(STEP_SEP) if line.strip()]


def join_steps(steps: Sequence[str]) -> str:
    """Join steps into a solution. Inverse of `split_steps` for stripped, single-line steps."""
    for step in steps:
        if STEP_SEP in step:
            raise TextContractError(f"a step may not contain the step separator: {step!r}")
    return STEP_SEP.join(steps)


# ---------------------------------------------------------------- answers


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written by a person or a model, or None if it is not one.

    Handles "$1,234", "1,234.00", "-5", "−5" (unicode minus), "7.0" and a trailing period.
    Integers come back without a decimal point; other values without trailing zeros.
    """
    s = text.strip().replace("−", "-").replace("$", "").replace(",", "").replace(" ", "")
    s = s.rstrip(".")
    if not s:
        return None
    sign = ""
    if s[0] in "+-":
        sign, s = ("-" if s[0] == "-" else ""), s[1:]
    if not re.fullmatch(r"\d+(\.\d+)?|\.\d+", s, re.ASCII):
        return None
    try:
        value = Decimal(sign + s)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))  # int() also folds "-0" into "0"
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The normalised final answer of a solution, or None when it gives none.

    Reads "The answer is N." (our format) or GSM8K's "#### N". When several appear, the last wins,
    since models sometimes restate a corrected answer.
    """
    matches = list(_ANSWER_RE.finditer(text)) + list(_GSM8K_RE.finditer(text))
    if not matches:
        return None
    last = max(matches, key=lambda m: m.start())
    return normalize_number(last.group(1))


def answer_step(answer: str) -> str:
    """The closing step that states a final answer."""
    return f"{ANSWER_PHRASE} {answer}."


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """True when both are numbers with the same value."""
    if predicted is None or reference is None:
        return False
    a, b = normalize_number(predicted), normalize_number(reference)
    return a is not None and a == b


# ---------------------------------------------------------------- prompts


def clean_question(question: str) -> str:
    """A question made safe to embed in any prompt.

    The text is NFKC-normalised (full-width and other compatibility forms become their plain
    characters), control and format characters go, whitespace (newlines included) collapses to
    single spaces, and text that imitates the critique marker or the step tag, in any case or
    spacing, is defused, so user input can never add steps or markers to what a model sees.
    """
    text = unicodedata.normalize("NFKC", question)
    text = "".join(" " if unicodedata.category(ch) in _CONTROL else ch for ch in text)
    text = " ".join(text.split())
    text = _TAG_RE.sub("(step)", _MARKER_RE.sub("(BAD)", text))
    if not text:
        raise TextContractError("question is empty")
    return text


def policy_prompt(question: str) -> str:
    """What the policy sees; its completion is the solution."""
    return f"{_QUESTION}{clean_question(question)}{STEP_SEP}{_ANSWER}{STEP_SEP}"


def question_in_prompt(question: str) -> tuple[str, str]:
    """The policy prompt's head split before the question: (`Question:`, ` {question}`).

    Read as a prompt and its completion, the second part is tokenised exactly as inside the
    policy prompt (the split falls on a word boundary), so the policy's likelihood of those
    tokens is its likelihood of the question as it meets it.
    """
    head = _QUESTION.rstrip(" ")
    return head, _QUESTION[len(head) :] + clean_question(question)


def global_refine_prompt(question: str, draft: str) -> str:
    """What the global refiner sees; its completion is a whole new solution."""
    draft_text = join_steps(split_steps(draft))
    return (
        f"{_QUESTION}{clean_question(question)}{STEP_SEP}"
        f"{_DRAFT}{STEP_SEP}{draft_text}{STEP_SEP}{_REFINED}{STEP_SEP}"
    )


def insert_critique(steps: Sequence[str], bad_index: int) -> list[str]:
    """The steps with the critique marker put before step `bad_index`."""
    if not 0 <= bad_index < len(steps):
        raise TextContractError(f"bad_index {bad_index} outside 0..{len(steps) - 1}")
    marked = list(steps)
    marked[bad_index] = f"{CRITIQUE_MARKER} {marked[bad_index]}"
    return marked


@dataclass(frozen=True)
class LocalPrompt:
    """The local refiner's prompt and the good prefix it continues from."""

    prompt: str
    prefix_steps: tuple[str, ...]

    def solution(self, completion: str) -> str:
        """The whole refined solution: the kept prefix followed by the model's continuation."""
        return join_steps([*self.prefix_steps, *split_steps(completion)])


def local_refine_prompt(question: str, draft: str, bad_index: int) -> LocalPrompt:
    """What the local refiner sees: the draft with the marker, then the kept good prefix.

    The refiner writes only the continuation from the first bad step; the steps before it are
    already in the prompt, so they are kept verbatim.
    """
    steps = split_steps(draft)
    marked = insert_critique(steps, bad_index)
    prefix = tuple(steps[:bad_index])
    head = (
        f"{_QUESTION}{clean_question(question)}{STEP_SEP}"
        f"{_DRAFT}{STEP_SEP}{join_steps(marked)}{STEP_SEP}{_REFINED}{STEP_SEP}"
    )
    body = "".join(step + STEP_SEP for step in prefix)
    return LocalPrompt(prompt=head + body, prefix_steps=prefix)


def reward_input(question: str, steps: Sequence[str]) -> str:
    """What the ORM and SORM see: the policy prompt, then each step followed by the step tag.

    A model reads one score per step tag, so every step is scored in one forward pass.
    """
    if not steps:
        raise TextContractError("a solution to score needs at least one step")
    join_steps(steps)  # validates: single-line steps only
    body = "".join(f"{step} {STEP_TAG}{STEP_SEP}" for step in steps)
    return policy_prompt(question) + body


# ---------------------------------------------------------------- fingerprint

# A question and a draft that touch every rule above: compatibility forms, control characters,
# extra whitespace, an imitated marker and tag, numbers with separators and signs.
_PROBE_QUESTION = " Ａnn has 1,200\tpencils\u200b and [ bad ] <|STEP|> gives −5.\n"
_PROBE_DRAFT = "Ann has 1200 pencils.\n\n  1200 - 5 = 1195.  \nThe answer is 1,195."


def text_fingerprint() -> str:
    """A hash of every input this contract renders: what each role's model sees, and how
    answers are read.

    It is computed from the rendered text, not from the source: a refactor that renders the
    same text keeps it, and a changed template, separator, marker, tag or answer rule changes it.
    Training writes it into a run's manifest; serving and evaluation compare it with their own.
    """
    steps = split_steps(_PROBE_DRAFT)
    local = local_refine_prompt(_PROBE_QUESTION, _PROBE_DRAFT, 1)
    rendered = [
        policy_prompt(_PROBE_QUESTION),
        "".join(question_in_prompt(_PROBE_QUESTION)),
        global_refine_prompt(_PROBE_QUESTION, _PROBE_DRAFT),
        local.prompt,
        local.solution("1200 - 5 = 1195.\nThe answer is 1195."),
        reward_input(_PROBE_QUESTION, steps),
        answer_step("1195"),
        repr(extract_answer(_PROBE_DRAFT)),
        repr(normalize_number(" −1,195.50 ")),
        repr(SPECIAL_TOKENS),
    ]
    blob = "\x00".join(rendered).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
