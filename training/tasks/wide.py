"""The wide synthetic task: the same chains of exact steps as `synthetic`, said the many ways
people say them.

Hundreds of names (`words`) and objects; pronouns ("He buys 5 more"); synonyms; reordered
clauses ("Compared with Tom, Mia has 3 more", "Tom has 3 fewer than Mia"); two steps in one
sentence ("buys 4 more and then gives 2 of them to Ann"); words for constants ("twice as
many", "doubles", "triples", "half"); groups ("3 boxes of 12 pencils"); and a closing question
about two people's total ("How many do Tom and Mia have altogether?"). The reference steps keep
the plain `synthetic` form, one equation each, so the step checker reads them unchanged.

Every phrasing table has a training part and a held-out part, and the word lists too: a
`TaskConfig.part` other than "train" draws only from a held-out part, to measure how a model
trained on the training parts generalises.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engines.text import answer_step
from training.tasks.types import Operation, Problem, Source, TaskConfig
from training.tasks.words import (
    CONTAINERS,
    HELDOUT_NAMES,
    HELDOUT_OBJECTS,
    PEOPLE,
    PRONOUNS,
    TRAIN_NAMES,
    TRAIN_OBJECTS,
    made_up_name,
    made_up_object,
)


@dataclass(frozen=True)
class Phrase:
    """One phrasing. `ks`: the constants it can state (words like "doubles" fit one value);
    None = any constant, written with {k}/{times}/{f}."""

    text: str
    ks: tuple[int, ...] | None = None

    def fits(self, k: int | None) -> bool:
        return self.ks is None or k in self.ks


@dataclass(frozen=True)
class Table:
    """The phrasings of one sentence kind: `train` for training data, `heldout` never in it."""

    train: tuple[Phrase, ...]
    heldout: tuple[Phrase, ...]


def _t(train: tuple[str | Phrase, ...], heldout: tuple[str | Phrase, ...]) -> Table:
    def phrases(items: tuple[str | Phrase, ...]) -> tuple[Phrase, ...]:
        return tuple(p if isinstance(p, Phrase) else Phrase(p) for p in items)

    return Table(phrases(train), phrases(heldout))


ADD, SUB, MUL, DIV = Operation.ADD, Operation.SUB, Operation.MUL, Operation.DIV
TIMES = {2: "twice", 3: "three times", 4: "four times", 5: "five times", 6: "six times"}
FRACTIONS = {
    2: "half", 3: "a third", 4: "a quarter", 5: "a fifth", 6: "a sixth",
    7: "a seventh", 8: "an eighth", 9: "a ninth", 10: "a tenth",
}  # fmt: skip

# Placeholders: {p} the person (a name or a pronoun), {poss} their possessive, {q} a new
# person, {a}/{b} people combined, {r} someone who receives, {k} the constant, {times} and {f}
# its words, {obj} the object, {v} the starting amount, {n}/{c} groups and their size.
START = _t(
    (
        "{p} has {v} {obj}.",
        "{p} starts with {v} {obj}.",
        "At first, {p} has {v} {obj}.",
        "{p} owns {v} {obj}.",
        "{p} had {v} {obj}.",
        "{p} keeps {v} {obj} in a box.",
        "There are {v} {obj} in {p}'s bag.",
        "{p} collected {v} {obj}.",
        "{p} has a collection of {v} {obj}.",
        "{p} got {v} {obj}.",
    ),
    ("{p} begins the day with {v} {obj}.", "In the morning, {p} has {v} {obj}."),
)
# An amount, then an update ({x}: a predicate below) in the same sentence.
START2 = _t(
    (
        "{p} has {v} {obj} and {x}.",
        "{p} had {v} {obj} and {x}.",
        "{p} starts with {v} {obj}, then {x}.",
        "{p} has {v} {obj}. {P} {x}.",
    ),
    ("{p} owned {v} {obj} but then {x}.",),
)
START_GROUPS = _t(
    (
        "{p} has {n} {box} of {c} {obj}.",
        "{p} buys {n} {box} with {c} {obj} in each.",
        "{p} has {n} {box}, and each holds {c} {obj}.",
    ),
    ("{p} carries {n} {box} that hold {c} {obj} apiece.",),
)
# Groups, then an update ({x}: a predicate below) in the same sentence.
START_GROUPS2 = _t(
    (
        "{p} has {n} {box} of {c} {obj} and {x}.",
        "{p} buys {n} {box} of {c} {obj}, then {x}.",
    ),
    ("{p} gets {n} {box} of {c} {obj} and afterwards {x}.",),
)
# Predicates of the current person; a frame puts the subject in front.
UPDATE: dict[Operation, Table] = {
    ADD: _t(
        (
            "buys {k} more {obj}",
            "finds {k} more {obj}",
            "gets {k} more {obj}",
            "is given {k} more {obj}",
            "bought {k} more",
            "picks up {k} more {obj}",
            "receives {k} {obj} from {r}",
            "wins {k} more {obj}",
            "purchases {k} more {obj}",
            "adds {k} {obj} to {poss} collection",
            "buys {k} more",
            "gets {k} more {obj} from {r}",
            "makes {k} more {obj}",
            "is given {k} {obj} by {r}",
            "picks {k} more {obj}",
            "gets another {k}",
        ),
        ("collects another {k} {obj}", "earns {k} extra {obj}"),
    ),
    SUB: _t(
        (
            "gives away {k} {obj}",
            "gives away {k}",
            "loses {k} {obj}",
            "sells {k} {obj}",
            "gives {k} of them to {r}",
            "gives {k} {obj} to {r}",
            "uses {k} of them",
            "lends {k} {obj} to {r}",
            "drops {k} {obj}",
            "eats {k} of them",
            "eats {k} {obj}",
            "gives {k} to {r}",
            "loses {k} of them",
            "sells {k} of them",
            "throws away {k} {obj}",
            "breaks {k} {obj}",
        ),
        ("hands {k} of them over to {r}", "misplaces {k} {obj}"),
    ),
    MUL: _t(
        (
            Phrase("doubles {poss} {obj}", (2,)),
            Phrase("triples {poss} {obj}", (3,)),
            "has {times} as many {obj} as before",
            "ends up with {k} times as many {obj}",
            "multiplies {poss} {obj} by {k}",
        ),
        ("now owns {times} as many {obj} as before", "sees {poss} {obj} grow {k} times over"),
    ),
    DIV: _t(
        (
            Phrase("gives away half of {poss} {obj}", (2,)),
            Phrase("loses half of them", (2,)),
            "splits {poss} {obj} into {k} equal groups and keeps one group",
            "keeps only {f} of {poss} {obj}",
            Phrase("gives away half of them", (2,)),
            Phrase("keeps half of {poss} {obj}", (2,)),
            "splits {poss} {obj} equally into {k} piles and keeps one pile",
        ),
        ("shares {poss} {obj} equally among {k} bags and keeps one bag",),
    ),
}
FRAME = _t(
    (
        "{p} {x}.",
        "Then {p} {x}.",
        "After that, {p} {x}.",
        "Later, {p} {x}.",
        "Soon after, {p} {x}.",
        "The next day, {p} {x}.",
        "On Monday, {p} {x}.",
    ),
    ("Next, {p} {x}.",),
)
# Two updates of one person in one sentence.
FRAME2 = _t(("{p} {x} and then {y}.", "{p} {x}, then {y}."), ("{p} first {x} and afterwards {y}.",))
DERIVE: dict[Operation, Table] = {
    ADD: _t(
        (
            "{q} has {k} more {obj} than {p}.",
            "{q} owns {k} {obj} more than {p} does.",
            "Compared with {p}, {q} has {k} more {obj}.",
            "{p} has {k} fewer {obj} than {q}.",
        ),
        ("{q}'s {obj} outnumber {p}'s by {k}.",),
    ),
    SUB: _t(
        (
            "{q} has {k} fewer {obj} than {p}.",
            "{q} has {k} {obj} less than {p} does.",
            "Compared with {p}, {q} has {k} fewer {obj}.",
            "{p} has {k} more {obj} than {q}.",
        ),
        ("{q} is {k} {obj} short of {p}.",),
    ),
    MUL: _t(
        (
            "{q} has {times} as many {obj} as {p}.",
            "{q} has {k} times as many {obj} as {p} does.",
            "{q} owns {k} times the number of {obj} that {p} has.",
            Phrase("{q} has double the {obj} {p} has.", (2,)),
            Phrase("{q} has triple the number of {obj} that {p} has.", (3,)),
        ),
        (
            "The number of {obj} {q} has is {k} times {p}'s.",
            "{q}'s {obj} are {times} as many as {p}'s.",
        ),
    ),
    DIV: _t(
        (
            "{q} has {f} as many {obj} as {p}.",
            "{q} owns {f} of the number of {obj} {p} has.",
            Phrase("{q} has half as many {obj} as {p} does.", (2,)),
        ),
        ("The number of {obj} {q} has is {f} of {p}'s.",),
    ),
}
COMBINE: dict[Operation, Table] = {
    ADD: _t(
        (
            "{q} has as many {obj} as {a} and {b} together.",
            "{q} has as many {obj} as {a} and {b} have in total.",
            "{q} has as many {obj} as {a} and {b} altogether.",
            "{q} has the same number of {obj} as {a} and {b} combined.",
        ),
        ("The number of {obj} {q} has equals what {a} and {b} have together.",),
    ),
    SUB: _t(
        (
            "{q} has as many {obj} as {a} has more than {b}.",
            "{q} has the difference between {a}'s and {b}'s {obj}.",
        ),
        ("{q} owns as many {obj} as the gap between {a} and {b}.",),
    ),
}
ASK = _t(
    (
        "How many {obj} does {p} have now?",
        "How many {obj} does {p} end up with?",
        "How many {obj} does {p} have in the end?",
        "How many {obj} does {p} have at the end?",
        "How many {obj} does {p} have left?",
        "How many {obj} does {p} have?",
        "How many {obj} does {p} own now?",
    ),
    ("What is the number of {obj} {p} has at the end?", "Find how many {obj} {p} has now."),
)
ASK_TOTAL = _t(
    (
        "How many {obj} do {a} and {b} have in total?",
        "How many {obj} do {a} and {b} have altogether?",
        "How many {obj} do {a} and {b} have together?",
    ),
    ("What is the total number of {obj} that {a} and {b} have?",),
)
TABLES: dict[str, Table] = {
    "start": START,
    "start2": START2,
    "start_groups": START_GROUPS,
    "start_groups2": START_GROUPS2,
    **{f"update{op.value}": t for op, t in UPDATE.items()},
    "frame": FRAME,
    "frame2": FRAME2,
    **{f"derive{op.value}": t for op, t in DERIVE.items()},
    **{f"combine{op.value}": t for op, t in COMBINE.items()},
    "ask": ASK,
    "ask_total": ASK_TOTAL,
}

STEP_UPDATE = "{p} now has {a} {op} {b} = {c} {obj}."
STEP_NEW = "{p} has {a} {op} {b} = {c} {obj}."
STEP_TOTAL = "{p} and {q} have {a} {op} {b} = {c} {obj}."


def _capital(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


@dataclass
class Step:
    """One step of a problem: its solution line, and the operation it does on a and b."""

    line: str
    op: Operation
    a: int
    b: int
    c: int


class _Builder:
    """Builds one wide problem; a helper returning None means that choice is infeasible."""

    def __init__(self, cfg: TaskConfig, rng: random.Random, pid: str) -> None:
        self.cfg, self.rng = cfg, rng
        names, objects = (
            (HELDOUT_NAMES, HELDOUT_OBJECTS)
            if cfg.part == "heldout_names"
            else (TRAIN_NAMES, TRAIN_OBJECTS)
        )
        self.heldout_phrasing = cfg.part == "heldout_templates"
        # Enough people for every step, a recipient or two, and the names they must not share.
        self.names = rng.sample(names, min(len(names), 2 * cfg.max_steps + 4))
        self.obj = rng.choice(objects)
        self.people = {n: PEOPLE[n] for n in self.names}  # name -> subject pronoun
        made_up = cfg.part == "made_up" or (
            cfg.part == "train"
            and random.Random(f"glore-made-up:{pid}").random() < cfg.pseudo_share
        )
        if made_up:
            # Made-up words replace the drawn ones, each keeping its pronoun. They come from an
            # rng of their own, so the problem's structure (the main rng's draws) is unchanged.
            words = random.Random(f"glore-made-up-words:{pid}")
            heldout = cfg.part == "made_up"
            fresh: dict[str, str] = {}
            for name in self.names:
                while (new := made_up_name(words, heldout=heldout)) in fresh:
                    pass
                fresh[new] = self.people[name]
            self.names, self.people = list(fresh), fresh
            self.obj = made_up_object(words, heldout=heldout)
        self.values: dict[str, int] = {}
        self.used: set[str] = set()  # everyone named so far (recipients are never reused)
        self.focus = ""
        self.sentences: list[str] = []
        self.steps: list[Step] = []
        self.last_subject = ""  # whom the last sentence was about, for pronouns
        self.last_named: set[str] = set()
        self.ops = [Operation(o) for o in cfg.operations]

    # ---------------------------------------------------------------- helpers

    def phrase(self, table: Table, k: int | None = None) -> str | None:
        options = table.heldout if self.heldout_phrasing else table.train
        fits = [p for p in options if p.fits(k)]
        return self.rng.choice(fits).text if fits else None

    def ok(self, value: int) -> bool:
        low = -self.cfg.max_value if self.cfg.allow_negative else 2
        return low <= value <= self.cfg.max_value

    def constant(self, op: Operation, a: int) -> int | None:
        cfg = self.cfg
        lo, hi = {
            DIV: (cfg.div_min, cfg.div_max),
            MUL: (cfg.mul_min, cfg.mul_max),
        }.get(op, (cfg.add_min, cfg.add_max))
        fits = [k for k in range(lo, hi + 1) if (c := op.apply(a, k)) is not None and self.ok(c)]
        if op is DIV:
            fits = [k for k in fits if a > 0 and k in FRACTIONS]
        if op is MUL:
            fits = [k for k in fits if k in TIMES]
        return self.rng.choice(fits) if fits else None

    def new_name(self) -> str | None:
        free = [n for n in self.names if n not in self.used]
        if not free:
            return None
        self.used.add(free[0])
        return free[0]

    def subject(self, who: str) -> tuple[str, str]:
        """(subject, possessive) for `who`: a pronoun when the last sentence was about them and
        named no one else it could mean, else the name."""
        pronoun = self.people[who]
        clear = self.last_subject == who and all(
            self.people[n] != pronoun for n in self.last_named - {who}
        )
        if clear and self.rng.random() < self.cfg.pronoun_prob:
            return pronoun, PRONOUNS[pronoun]
        return who, PRONOUNS[pronoun]

    def say(self, sentence: str, subject: str, named: set[str]) -> None:
        self.sentences.append(_capital(sentence))
        self.last_subject, self.last_named = subject, named

    def commit(self, who: str, line: str, op: Operation, a: int, b: int, c: int) -> None:
        self.values[who] = c
        self.focus = who
        text = line.format(p=who, a=a, op=op.value, b=b, c=c, obj=self.obj)
        self.steps.append(Step(text, op, a, b, c))

    # ---------------------------------------------------------------- sentences

    def start(self, budget: int) -> bool:
        """The opening: an amount, or groups of a size (a multiplication step of its own)."""
        cfg, rng = self.cfg, self.rng
        who = self.new_name()
        assert who is not None
        self.focus = who
        if budget > 1 and rng.random() < cfg.group_prob:
            sizes = [(n, c) for n in range(2, 6) for c in range(2, 13) if self.ok(n * c)]
            text = self.phrase(START_GROUPS)
            if sizes and text is not None:
                n, c = rng.choice(sizes)
                box = rng.choice([b for b in CONTAINERS if b != self.obj])
                self.commit(who, STEP_NEW, MUL, n, c, n * c)
                named = {who}
                # "Ann has 3 boxes of 12 pencils and gives away 5": groups and an update at once.
                joined = self.phrase(START_GROUPS2) if budget > 2 else None
                if joined is not None and rng.random() < cfg.clause_prob:
                    update = self.update_clause(who, n * c)
                    if update is not None:
                        text, named = joined.replace("{x}", update[0]), named | update[1]
                sentence = text.format(p=who, n=n, box=box, c=c, obj=self.obj)
                self.say(sentence, who, named)
                return True
        v = rng.randint(cfg.start_min, cfg.start_max)
        self.values[who] = v
        # "Tom has 3 apples and buys 4 more.": the amount and an update at once.
        joined = self.phrase(START2) if budget > 1 else None
        if joined is not None and rng.random() < cfg.clause_prob:
            update = self.update_clause(who, v)
            if update is not None:
                x, named = update
                pronoun = _capital(self.people[who])
                sentence = joined.format(p=who, P=pronoun, v=v, obj=self.obj, x=x)
                self.say(sentence, who, {who} | named)
                return True
        text = self.phrase(START)
        assert text is not None
        self.say(text.format(p=who, v=v, obj=self.obj), who, {who})
        return False

    def update_clause(self, who: str, a: int) -> tuple[str, set[str]] | None:
        """An update of `who` said in the same sentence as its start: the first operation (in
        a random order) with a predicate, committed as a step from `a`; (predicate text, people
        it names), or None when no operation fits."""
        for op in self.rng.sample(self.ops, len(self.ops)):
            then = self.predicate(op)
            if then is not None:
                x, k, result, named = then
                self.commit(who, STEP_UPDATE, op, a, k, result)
                return x, named
        return None

    def predicate(self, op: Operation) -> tuple[str, int, int, set[str]] | None:
        """An update of the focus: (predicate text, k, result, people it names) or None."""
        a = self.values[self.focus]
        k = self.constant(op, a)
        if k is None:
            return None
        text = self.phrase(UPDATE[op], k)
        if text is None:
            return None
        named: set[str] = set()
        r = ""
        if "{r}" in text:
            recipient = self.new_name()
            if recipient is None:
                return None
            r, named = recipient, {recipient}
        c = op.apply(a, k)
        assert c is not None
        poss = PRONOUNS[self.people[self.focus]]
        x = text.format(k=k, times=TIMES.get(k, ""), f=FRACTIONS.get(k, ""), obj=self.obj,
                        poss=poss, r=r)  # fmt: skip
        return x, k, c, named

    def update(self, ops: list[Operation], two: bool) -> int:
        """One sentence updating the focus, with one step or (`two`) two; the steps made."""
        who = self.focus
        for op in ops:
            first = self.predicate(op)
            if first is None:
                continue
            x, k, c, named = first
            a = self.values[who]
            subject, _ = self.subject(who)
            self.commit(who, STEP_UPDATE, op, a, k, c)
            if two:
                for op2 in self.rng.sample(ops, len(ops)):
                    second = self.predicate(op2)
                    if second is None:
                        continue
                    y, k2, c2, named2 = second
                    frame = self.phrase(FRAME2)
                    assert frame is not None
                    self.commit(who, STEP_UPDATE, op2, c, k2, c2)
                    self.say(frame.format(p=subject, x=x, y=y), who, {who} | named | named2)
                    return 2
            frame = self.phrase(FRAME)
            assert frame is not None
            self.say(frame.format(p=subject, x=x), who, {who} | named)
            return 1
        return 0

    def derive(self, op: Operation) -> bool:
        p, a = self.focus, self.values[self.focus]
        k = self.constant(op, a)
        if k is None:
            return False
        text = self.phrase(DERIVE[op], k)
        q = self.new_name() if text is not None else None
        if text is None or q is None:
            return False
        c = op.apply(a, k)
        assert c is not None
        sentence = text.format(q=q, p=p, k=k, times=TIMES.get(k, ""), f=FRACTIONS.get(k, ""),
                               obj=self.obj)  # fmt: skip
        self.commit(q, STEP_NEW, op, a, k, c)
        self.say(sentence, q, {p, q})
        return True

    def combine(self, op: Operation) -> bool:
        p, a = self.focus, self.values[self.focus]
        others = [n for n in self.values if n != p]
        text = self.phrase(COMBINE[op]) if op in COMBINE else None
        if not others or text is None:
            return False
        other = self.rng.choice(others)
        b = self.values[other]
        if op is SUB:
            if a == b:
                return False
            (big, x), (small, y) = sorted(((p, a), (other, b)), key=lambda t: -t[1])
        else:
            (big, x), (small, y) = (
                ((other, b), (p, a)) if self.rng.random() < 0.5 else ((p, a), (other, b))
            )
        c = op.apply(x, y)
        if c is None or not self.ok(c):
            return False
        q = self.new_name()
        if q is None:
            return False
        self.commit(q, STEP_NEW, op, x, y, c)
        self.say(text.format(q=q, a=big, b=small, obj=self.obj), q, {q, big, small})
        return True

    def total(self) -> str | None:
        """The closing question about the focus and someone else together, and its step."""
        p, a = self.focus, self.values[self.focus]
        others = [n for n in self.values if n != p]
        text = self.phrase(ASK_TOTAL)
        if not others or text is None:
            return None
        other = self.rng.choice(others)
        b = self.values[other]
        if not self.ok(a + b):
            return None
        first, second = (p, other) if self.rng.random() < 0.5 else (other, p)
        line = STEP_TOTAL.format(p=first, q=second, a=self.values[first], op="+",
                                 b=self.values[second], c=a + b, obj=self.obj)  # fmt: skip
        self.steps.append(Step(line, ADD, self.values[first], self.values[second], a + b))
        return _capital(text.format(a=first, b=second, obj=self.obj))


def attempt(cfg: TaskConfig, rng: random.Random, pid: str) -> Problem | None:
    """One wide problem with `min_steps..max_steps` steps, or None when a choice dead-ends."""
    b = _Builder(cfg, rng, pid)
    target = rng.randint(cfg.min_steps, cfg.max_steps)
    ops = [Operation(o) for o in cfg.operations]
    b.start(target)
    ask: str | None = None
    while len(b.steps) < target:
        left = target - len(b.steps)
        if left == 1 and len(b.values) > 1 and ADD in ops and rng.random() < cfg.total_prob:
            ask = b.total()
            if ask is not None:
                break
        roll = rng.random()
        rng.shuffle(ops)
        done = False
        if roll < cfg.combine_prob:
            done = any(b.combine(op) for op in ops)
        elif roll < cfg.combine_prob + cfg.derive_prob:
            done = any(b.derive(op) for op in ops)
        if not done:
            two = left >= 2 and rng.random() < cfg.clause_prob
            if b.update(ops, two) == 0:
                return None
    if ask is None:
        text = b.phrase(ASK)
        assert text is not None
        subject, _ = b.subject(b.focus)
        ask = _capital(text.format(p=subject, obj=b.obj))
    answer = str(b.steps[-1].c)
    return Problem(
        id=pid,
        question=" ".join([*b.sentences, ask]),
        steps=(*(s.line for s in b.steps), answer_step(answer)),
        answer=answer,
        step_values=(*(str(s.c) for s in b.steps), None),
        source=Source.SYNTHETIC.value,
        step_ops=(*(s.op.value for s in b.steps), None),
        step_operands=(*((str(s.a), str(s.b)) for s in b.steps), None),
    )
