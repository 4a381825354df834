"""Stage 5, the refiners: SFT on (question, draft) -> correct solution pairs built from rollouts.

The global refiner rewrites a whole solution; the local refiner continues from the last good
prefix before the critique marker. Both start from the policy's weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from engines.base import Role, SamplingParams
from engines.text import global_refine_prompt, join_steps, local_refine_prompt
from training import generation
from training.config import RunConfig
from training.data import SFTExample, sft_example
from training.pairs import RefinePair
from training.tasks import Problem, check_solution
from training.vstar import DraftRollout


def refine_examples(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[RefinePair]
) -> list[SFTExample]:
    return [sft_example(tokenizer, p.prompt, p.target) for p in pairs]


def evaluate_refiner(
    role: Role,
    path: str,
    drafts: Sequence[DraftRollout],
    problems: Mapping[str, Problem],
    run: RunConfig,
) -> dict[str, float | int | None]:
    """Greedy refinement of held-out drafts.

    fix_rate: incorrect drafts whose refinement is correct. keep_rate: correct drafts still
    correct after refinement. The local refiner is told where the exact checker found the first
    error (an oracle "where"; the service asks the SORM instead), and a random step of correct
    drafts, which it should leave as they are.
    """
    cfg = run.refiners
    wrong = [d for d in drafts if not d.correct][: cfg.eval_drafts]
    right = [d for d in drafts if d.correct][: cfg.eval_drafts]
    prompts: list[str] = []
    prefixes: list[tuple[str, ...]] = []
    for d in [*wrong, *right]:
        q = problems[d.problem_id].question
        text = join_steps(d.steps)
        if role is Role.REFINE_GLOBAL:
            prompts.append(global_refine_prompt(q, text))
            prefixes.append(())
        else:
            bad = _first_error(d, problems[d.problem_id])
            lp = local_refine_prompt(q, text, bad)
            prompts.append(lp.prompt)
            prefixes.append(lp.prefix_steps)
    spec = generation.engine_spec(path, run.rollouts.backend, run.rollouts.max_batch_size)
    gen = generation.load_generator(role, spec)
    try:
        outs = generation.generate(
            gen,
            prompts,
            SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens),
            desc=f"{role} eval",
        )
    finally:
        generation.close(gen)
    ok = []
    for d, prefix, (c, *_) in zip([*wrong, *right], prefixes, outs, strict=True):
        full = "\n".join([*prefix, c.text])
        ok.append(check_solution(problems[d.problem_id], full).answer_correct)
    fixed, kept = ok[: len(wrong)], ok[len(wrong) :]
    return {
        "incorrect_drafts": len(wrong),
        "correct_drafts": len(right),
        "fix_rate": sum(fixed) / len(fixed) if fixed else None,
        "keep_rate": sum(kept) / len(kept) if kept else None,
    }


def _first_error(d: DraftRollout, problem: Problem) -> int:
    """The exact first error of an incorrect draft; a fixed mid step of a correct one."""
    if not d.correct:
        first = next((i for i, ok in enumerate(d.prefix_ok) if not ok), len(d.steps) - 1)
        return first
    return len(d.steps) // 2
