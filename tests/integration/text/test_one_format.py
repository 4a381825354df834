"""Training and serving render the same example into the same tokens (the text contract's test).

Each test takes one example through the training path (the trainer's tokenised example) and
through the service path (the prompt the pipeline sends, tokenised by the real engine), and
checks they agree token for token.
"""

from __future__ import annotations

from collections.abc import Sequence

from engines.base import Completion, Role, SamplingParams, ScoreRequest
from engines.hf import HFGenerator, HFScorer
from engines.reward import reward_token_ids
from engines.text import join_steps, local_refine_prompt, split_steps
from service.pipeline.draft import draft_solution
from service.pipeline.refine import refine_local
from service.pipeline.types import Candidate, CandidateKind, PipelineConfig
from tests.support.tiny_models import TinyCheckpoints
from training.data import IGNORE, reward_example
from training.pairs import PairKind, RefinePair
from training.policy import policy_examples
from training.refiners import refine_examples
from training.tasks import TaskConfig, generate_problems

PROBLEM = generate_problems(TaskConfig.tiny(), 1, seed=11)[0]


class Recording:
    """The real engine, with a note of every prompt the pipeline sends it."""

    def __init__(self, engine: HFGenerator) -> None:
        self.engine = engine
        self.prompts: list[str] = []

    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        self.prompts += prompts
        return await self.engine.generate(prompts, params)


def _assert_prompt_then_target(served: list[int], input_ids: list[int], labels: list[int]) -> None:
    assert input_ids[: len(served)] == served
    assert labels[: len(served)] == [IGNORE] * len(served)  # no loss on what the engine is fed
    assert labels[len(served)] != IGNORE  # the first trained token is the first one generated


async def test_the_policy_sees_in_service_exactly_the_prompt_it_was_trained_on(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    engine = HFGenerator(tiny_checkpoints.policy)
    try:
        policy = Recording(engine)
        await draft_solution(PROBLEM.question, policy, PipelineConfig(max_new_tokens=4))  # type: ignore[arg-type]
        [example] = policy_examples(engine.tokenizer, [PROBLEM])
        served = engine.tokenizer.encode(policy.prompts[0], add_special_tokens=False)
        _assert_prompt_then_target(served, example.input_ids, example.labels)
    finally:
        await engine.close()


async def test_the_local_refiner_sees_in_service_exactly_its_training_prompt(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    engine = HFGenerator(tiny_checkpoints.policy)
    try:
        steps = list(PROBLEM.steps)
        steps[1] = steps[1].replace("=", "= 1 +", 1)  # a wrong second step
        draft = Candidate(
            CandidateKind.DRAFT, join_steps(steps), tuple(steps), None, 30, "stop", Role.POLICY
        )
        refiner = Recording(engine)
        await refine_local(PROBLEM.question, draft, 1, refiner, PipelineConfig(max_new_tokens=4))  # type: ignore[arg-type]

        # training.pairs renders a local pair's prompt this way, then the trainer tokenises it.
        pair = RefinePair(
            PROBLEM.id,
            PairKind.FIX,
            local_refine_prompt(PROBLEM.question, join_steps(steps), 1).prompt,
            join_steps(PROBLEM.steps[1:]),
        )
        [example] = refine_examples(engine.tokenizer, [pair])
        served = engine.tokenizer.encode(refiner.prompts[0], add_special_tokens=False)
        _assert_prompt_then_target(served, example.input_ids, example.labels)
    finally:
        await engine.close()


async def test_reward_models_score_in_service_exactly_the_tokens_they_were_trained_on(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    scorer = HFScorer(tiny_checkpoints.scorer)
    try:
        steps = split_steps(PROBLEM.solution)
        trained = reward_example(scorer.tokenizer, PROBLEM.question, steps, [1.0] * len(steps))
        served = reward_token_ids(
            scorer.tokenizer, scorer.tag_id, ScoreRequest(PROBLEM.question, tuple(steps))
        )
        assert trained.input_ids == served
        tagged = [i for i, t in enumerate(trained.targets) if t == t]  # not NaN
        assert [served[i] for i in tagged] == [scorer.tag_id] * len(steps)
    finally:
        await scorer.close()
