"""A procedural generator of GSM8K-style word problems with an exact ground truth for every step.

Each problem is a chain of quantities held by people; each reference step is one short line with
one equation `a op b = c` that uses the previous result (sometimes with an earlier one).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from tqdm import tqdm

from engines.text import answer_step
from training.tasks import wide
from training.tasks.types import Operation, Problem, Source, TaskConfig

NAMES: tuple[str, ...] = (
    "Tom", "Mia", "Ben", "Ann", "Sam", "Eva", "Max", "Lily", "Jack", "Emma",
    "Leo", "Zoe", "Noah", "Ava", "Liam", "Ella", "Owen", "Ruby", "Finn", "Nora",
    "Jake", "Lucy", "Omar", "Ivy", "Ravi", "Maya", "Carl", "Rosa", "Hugo", "Nina",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "apples", "marbles", "stickers", "books", "coins", "cookies", "pencils", "stamps",
    "shells", "cards", "toys", "eggs", "flowers", "balloons", "crayons", "beads",
)  # fmt: skip
# "Mia has a third as many ..." (divisors 2..10).
FRACTIONS = {
    2: "half", 3: "a third", 4: "a quarter", 5: "a fifth", 6: "a sixth",
    7: "a seventh", 8: "an eighth", 9: "a ninth", 10: "a tenth",
}  # fmt: skip


class StepKind(StrEnum):
    UPDATE = "update"  # the current person's quantity changes by a constant
    DERIVE = "derive"  # a new person's quantity is the current one changed by a constant
    COMBINE = "combine"  # a new person's quantity joins two earlier quantities


# Question sentences. {p}: the person, {q}: a new person, {a}/{b}: people combined, {k}: the
# constant, {f}: the fraction word, {obj}: the object, {v}: the starting quantity.
START = (
    "{p} has {v} {obj}.",
    "{p} starts with {v} {obj}.",
    "At first, {p} has {v} {obj}.",
    "{p} owns {v} {obj}.",
)
UPDATE: dict[Operation, tuple[str, ...]] = {
    Operation.ADD: (
        "{p} buys {k} more {obj}.",
        "{p} finds {k} more {obj}.",
        "Then {p} gets {k} more {obj}.",
        "{p} is given {k} more {obj}.",
    ),
    Operation.SUB: (
        "{p} gives away {k} {obj}.",
        "{p} loses {k} {obj}.",
        "Then {p} sells {k} {obj}.",
        "{p} gives {k} {obj} to a friend.",
    ),
    Operation.MUL: (
        "{p} then has {k} times as many {obj} as before.",
        "{p} multiplies the number of {obj} by {k}.",
        "The number of {obj} {p} has becomes {k} times as large.",
        "Then {p} ends up with {k} times as many {obj}.",
    ),
    Operation.DIV: (
        "{p} splits the {obj} into {k} equal groups and keeps one group.",
        "{p} packs the {obj} into {k} equal boxes and keeps one box.",
        "{p} divides the {obj} into {k} equal piles and keeps only one pile.",
        "{p} shares the {obj} equally among {k} bags and keeps one bag.",
    ),
}
DERIVE: dict[Operation, tuple[str, ...]] = {
    Operation.ADD: (
        "{q} has {k} more {obj} than {p}.",
        "{q} has {k} {obj} more than {p} does.",
        "{q} owns {k} more {obj} than {p}.",
        "{q} has {k} {obj} more than {p} has.",
    ),
    Operation.SUB: (
        "{q} has {k} fewer {obj} than {p}.",
        "{q} has {k} {obj} less than {p} does.",
        "{q} owns {k} fewer {obj} than {p}.",
        "{q} has {k} {obj} fewer than {p} has.",
    ),
    Operation.MUL: (
        "{q} has {k} times as many {obj} as {p}.",
        "{q} owns {k} times the number of {obj} that {p} has.",
        "The number of {obj} {q} has is {k} times {p}'s.",
        "{q} has {k} times as many {obj} as {p} does.",
    ),
    Operation.DIV: (
        "{q} has {f} as many {obj} as {p}.",
        "{q} owns {f} of the number of {obj} {p} has.",
        "The number of {obj} {q} has is {f} of {p}'s.",
        "{q} has {f} as many {obj} as {p} does.",
    ),
}
COMBINE: dict[Operation, tuple[str, ...]] = {
    Operation.ADD: (
        "{q} has as many {obj} as {a} and {b} together.",
        "{q} has the same number of {obj} as {a} and {b} combined.",
        "{q} owns as many {obj} as {a} and {b} have in total.",
        "The number of {obj} {q} has equals what {a} and {b} have together.",
    ),
    Operation.SUB: (
        "{q} has as many {obj} as {a} has more than {b}.",
        "{q} has the difference between {a}'s and {b}'s {obj}.",
        "{q} owns as many {obj} as the gap between {a} and {b}.",
        "The number of {obj} {q} has is how many more {a} has than {b}.",
    ),
}
ASK = (
    "How many {obj} does {p} have now?",
    "How many {obj} does {p} end up with?",
    "How many {obj} does {p} have in the end?",
    "How many {obj} does {p} have at the end?",
)
# Reference steps are uniform and short (~12 tokens), so a tiny model learns them quickly.
STEP_UPDATE = "{p} now has {a} {op} {b} = {c} {obj}."
STEP_NEW = "{p} has {a} {op} {b} = {c} {obj}."


def _part(words: tuple[str, ...], n: int, held_out: bool, knob: str) -> list[str]:
    """The first `n` words (what training draws from), or with `held_out` the rest."""
    if not held_out:
        return list(words[: min(n, len(words))])
    if n >= len(words):
        raise ValueError(
            f"TaskConfig.{knob} = {n} uses all {len(words)} of them: none is left to hold out"
        )
    return list(words[n:])


@dataclass(kw_only=True)
class _Step(wide.Step):
    sentence: str


class _Builder:
    """Builds one problem step by step; `None` from a helper means that choice is infeasible."""

    def __init__(self, config: TaskConfig, rng: random.Random) -> None:
        if config.part == "made_up":
            raise ValueError("the basic family has no made-up words (the wide family has)")
        self.cfg = config
        self.rng = rng
        self.names = _part(NAMES, config.n_names, config.part == "heldout_names", "n_names")
        rng.shuffle(self.names)
        objects = _part(OBJECTS, config.n_objects, config.part == "heldout_names", "n_objects")
        self.obj = rng.choice(objects)
        self.values: dict[str, int] = {}  # each person's current quantity
        self.focus = ""

    def template(self, options: tuple[str, ...]) -> str:
        held = self.cfg.part == "heldout_templates"
        return self.rng.choice(_part(options, self.cfg.n_templates, held, "n_templates"))

    def ok(self, value: int) -> bool:
        # A floor of 2 keeps plurals right ("1 apples" reads wrong) and avoids trivial ×1 chains.
        low = -self.cfg.max_value if self.cfg.allow_negative else 2
        return low <= value <= self.cfg.max_value

    def constant(self, op: Operation, a: int) -> int | None:
        """A constant for `a op k` that keeps the result in range, or None if there is none."""
        cfg = self.cfg
        if op is Operation.DIV:
            lo, hi = cfg.div_min, cfg.div_max
        elif op is Operation.MUL:
            lo, hi = cfg.mul_min, cfg.mul_max
        else:
            lo, hi = cfg.add_min, cfg.add_max
        fits = [k for k in range(lo, hi + 1) if (c := op.apply(a, k)) is not None and self.ok(c)]
        if op is Operation.DIV:
            fits = [k for k in fits if a > 0]
        return self.rng.choice(fits) if fits else None

    def new_name(self) -> str | None:
        free = [n for n in self.names if n not in self.values]
        return free[0] if free else None

    def start(self) -> str:
        v = self.rng.randint(self.cfg.start_min, self.cfg.start_max)
        self.focus = self.names[0]
        self.values[self.focus] = v
        return self.template(START).format(p=self.focus, v=v, obj=self.obj)

    def step(self) -> _Step | None:
        cfg, rng = self.cfg, self.rng
        kinds: list[StepKind] = []
        roll = rng.random()
        if roll < cfg.combine_prob:
            kinds.append(StepKind.COMBINE)
        elif roll < cfg.combine_prob + cfg.derive_prob:
            kinds.append(StepKind.DERIVE)
        kinds.append(StepKind.UPDATE)  # the fallback when the rolled kind is infeasible
        for kind in kinds:
            ops = [Operation(o) for o in cfg.operations]
            if kind is StepKind.COMBINE:
                ops = [o for o in ops if o in COMBINE]
            rng.shuffle(ops)
            for op in ops:
                built = self._try(kind, op)
                if built is not None:
                    return built
        return None

    def _try(self, kind: StepKind, op: Operation) -> _Step | None:
        p, a = self.focus, self.values[self.focus]
        if kind is StepKind.COMBINE:
            q = self.new_name()
            others = [n for n in self.values if n != p]
            if q is None or not others:
                return None
            other = self.rng.choice(others)
            b = self.values[other]
            if op is Operation.SUB:
                if a == b:
                    return None
                # Phrased as "how many more the larger has", so the equation is big - small.
                (big, x), (small, y) = sorted(((p, a), (other, b)), key=lambda t: -t[1])
            else:
                (big, x), (small, y) = (
                    ((other, b), (p, a))
                    if self.rng.random() < 0.5
                    else (
                        (p, a),
                        (other, b),
                    )
                )
            c = op.apply(x, y)
            if c is None or not self.ok(c):
                return None
            sentence = self.template(COMBINE[op]).format(q=q, a=big, b=small, obj=self.obj)
            return self._commit(q, sentence, STEP_NEW, op, x, y, c)
        k = self.constant(op, a)
        if k is None:
            return None
        c = op.apply(a, k)
        assert c is not None  # constant() only returns k with an exact result
        if kind is StepKind.DERIVE:
            q = self.new_name()
            if q is None:
                return None
            sentence = self.template(DERIVE[op]).format(
                q=q, p=p, k=k, f=FRACTIONS.get(k, ""), obj=self.obj
            )
            return self._commit(q, sentence, STEP_NEW, op, a, k, c)
        sentence = self.template(UPDATE[op]).format(p=p, k=k, obj=self.obj)
        return self._commit(p, sentence, STEP_UPDATE, op, a, k, c)

    def _commit(
        self, who: str, sentence: str, line: str, op: Operation, a: int, b: int, c: int
    ) -> _Step:
        self.values[who] = c
        self.focus = who
        text = line.format(p=who, a=a, op=op.value, b=b, c=c, obj=self.obj)
        return _Step(sentence=sentence, line=text, op=op, a=a, b=b, c=c)


def generate_problem(config: TaskConfig, seed: int, index: int) -> Problem:
    """Problem number `index` of the stream `seed`; it depends on nothing else.

    Each problem has its own `random.Random`, so `generate_problems(cfg, n, s)[:k]` equals
    `generate_problems(cfg, k, s)` and a problem can be regenerated from its id alone.
    """
    rng = random.Random(f"glore-syn:{seed}:{index}")
    attempt = wide.attempt if config.family == "wide" else _attempt
    for _ in range(100):
        problem = attempt(config, rng, f"syn-{seed}-{index}")
        if problem is not None:
            return problem
    raise ValueError(
        f"TaskConfig {config.name!r} cannot build a problem within its ranges "
        f"(seed {seed}, index {index}); widen max_value or the operand ranges"
    )


def _attempt(config: TaskConfig, rng: random.Random, pid: str) -> Problem | None:
    builder = _Builder(config, rng)
    sentences = [builder.start()]
    steps: list[_Step] = []
    for _ in range(rng.randint(config.min_steps, config.max_steps)):
        step = builder.step()
        if step is None:
            return None
        sentences.append(step.sentence)
        steps.append(step)
    sentences.append(builder.template(ASK).format(p=builder.focus, obj=builder.obj))
    answer = str(steps[-1].c)
    return Problem(
        id=pid,
        question=" ".join(sentences),
        steps=(*(s.line for s in steps), answer_step(answer)),
        answer=answer,
        step_values=(*(str(s.c) for s in steps), None),
        source=Source.SYNTHETIC.value,
        step_ops=(*(s.op.value for s in steps), None),
        step_operands=(*((str(s.a), str(s.b)) for s in steps), None),
    )


def generate_problems(
    config: TaskConfig, n: int, seed: int, *, progress: bool = False
) -> list[Problem]:
    """`n` problems of the stream `seed`, deterministic (no global random state is touched)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    indices = range(n)
    if progress:
        indices = tqdm(indices, desc=f"generating {config.name} problems", unit="problem")
    return [generate_problem(config, seed, i) for i in indices]
