"""One protocol suite, run against both backends: generation and one-pass step scoring."""

from __future__ import annotations

import asyncio

import pytest

from engines.base import (
    MAX_SEED,
    Generator,
    InputError,
    SamplingParams,
    Scorer,
    ScoreRequest,
    StepScores,
)
from engines.text import STEP_TAG, extract_answer, policy_prompt
from tests.support.tiny_models import corrupt, tiny_problems

PROBLEMS = tiny_problems(12, seed=101)
PROMPTS = [policy_prompt(p.question) for p in PROBLEMS]
GREEDY = SamplingParams(max_new_tokens=96)


async def test_generate_returns_n_completions_per_prompt_in_prompt_order(
    generator: Generator,
) -> None:
    out = await generator.generate(PROMPTS[:3], SamplingParams(n=2, max_new_tokens=96))
    assert [len(c) for c in out] == [2, 2, 2]
    singles = [(await generator.generate([p], GREEDY))[0][0] for p in PROMPTS[:3]]
    assert [c[0].text for c in out] == [s.text for s in singles]


async def test_greedy_generation_ends_at_eos_with_a_final_answer(generator: Generator) -> None:
    out = await generator.generate(PROMPTS[:4], GREEDY)
    for (c,) in out:
        assert c.finish_reason == "stop"
        assert 0 < c.num_tokens <= GREEDY.max_new_tokens
        assert "</s>" not in c.text
        assert extract_answer(c.text) is not None
    assert out == await generator.generate(PROMPTS[:4], GREEDY)


async def test_max_new_tokens_cuts_generation_with_finish_reason_length(
    generator: Generator,
) -> None:
    ((c,),) = await generator.generate(PROMPTS[:1], SamplingParams(max_new_tokens=3))
    assert c.finish_reason == "length"
    assert c.num_tokens == 3


async def test_a_stop_string_ends_generation_before_the_stop_text(generator: Generator) -> None:
    ((full,),) = await generator.generate(PROMPTS[:1], GREEDY)
    ((cut,),) = await generator.generate(
        PROMPTS[:1], SamplingParams(max_new_tokens=96, stop=("\n",))
    )
    assert cut.finish_reason == "stop"
    assert cut.text == full.text.split("\n")[0]
    assert cut.num_tokens < full.num_tokens


async def test_seeded_sampling_is_reproducible_and_gives_n_valid_completions(
    generator: Generator,
) -> None:
    params = SamplingParams(n=6, temperature=1.5, top_p=0.95, seed=7, max_new_tokens=64)
    first = await generator.generate(PROMPTS[:2], params)
    again = await generator.generate(PROMPTS[:2], params)
    assert first == again
    for completions in first:
        assert len(completions) == 6
        for c in completions:
            assert c.finish_reason in ("stop", "length")
            assert 0 < c.num_tokens <= 64
        assert len({c.text for c in completions}) > 1


async def test_concurrent_callers_get_the_answers_of_one_batch(generator: Generator) -> None:
    batched = await generator.generate(PROMPTS, GREEDY)
    separate = await asyncio.gather(*(generator.generate([p], GREEDY) for p in PROMPTS))
    assert [s[0] for s in separate] == batched


async def test_cancelling_a_generation_leaves_the_engine_serving(generator: Generator) -> None:
    # Enough rows (hundreds of sampled solutions) that no machine finishes them before the
    # cancel: a fast machine once finished a smaller batch inside the wait, and nothing was cut.
    long = SamplingParams(n=16, temperature=1.0, max_new_tokens=400, seed=1)
    task = asyncio.create_task(generator.generate(PROMPTS * 4, long))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert generator.health().healthy
    ((c,),) = await generator.generate(PROMPTS[:1], GREEDY)
    assert c.finish_reason == "stop"


async def test_a_prompt_longer_than_the_model_is_refused_naming_prompts(
    generator: Generator,
) -> None:
    with pytest.raises(ValueError, match="prompts"):
        await generator.generate([policy_prompt("seven " * 2000)], GREEDY)
    assert generator.health().healthy


async def test_a_single_string_instead_of_a_list_is_refused(generator: Generator) -> None:
    with pytest.raises(TypeError, match="prompts"):
        await generator.generate(PROMPTS[0], GREEDY)  # type: ignore[arg-type]


def _requests() -> list[ScoreRequest]:
    import random

    rng = random.Random(5)
    good = [ScoreRequest(p.question, p.steps) for p in PROBLEMS[:6]]
    bad = [ScoreRequest(p.question, corrupt(p, rng)[0]) for p in PROBLEMS[:6]]
    return good + bad


async def test_score_returns_one_probability_per_step_in_request_order(scorer: Scorer) -> None:
    requests = _requests()
    scores = await scorer.score(requests)
    assert len(scores) == len(requests)
    for r, s in zip(requests, scores, strict=True):
        assert isinstance(s, StepScores)
        assert len(s.step_probs) == len(r.steps)
        assert all(0.0 <= p <= 1.0 for p in s.step_probs)
        assert s.outcome_prob == s.step_probs[-1]
    one_by_one = [(await scorer.score([r]))[0] for r in requests[:3]]
    for a, b in zip(one_by_one, scores[:3], strict=True):
        assert a.step_probs == pytest.approx(b.step_probs, abs=1e-5)


async def test_each_step_reading_equals_the_outcome_of_its_prefix(scorer: Scorer) -> None:
    """One pass reads every step: the reading at tag i is what scoring steps[:i+1] alone gives."""
    problem = max(PROBLEMS, key=lambda p: len(p.steps))
    (full,) = await scorer.score([ScoreRequest(problem.question, problem.steps)])
    prefixes = await scorer.score(
        [ScoreRequest(problem.question, problem.steps[: i + 1]) for i in range(len(problem.steps))]
    )
    assert list(full.step_probs) == pytest.approx([s.outcome_prob for s in prefixes], abs=1e-5)


async def test_a_step_containing_the_step_tag_is_refused_naming_steps(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="steps"):
        await scorer.score(
            [ScoreRequest("How many?", (f"1 + 1 = 2 {STEP_TAG}", "The answer is 2."))]
        )


async def test_an_empty_solution_is_refused_naming_steps(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="step"):
        await scorer.score([ScoreRequest("How many?", ())])


def test_a_serving_generator_reports_healthy(generator: Generator) -> None:
    assert generator.health().healthy


def test_a_serving_scorer_reports_healthy(scorer: Scorer) -> None:
    assert scorer.health().healthy


async def test_no_prompts_give_no_completions(generator: Generator) -> None:
    assert await generator.generate([], GREEDY) == []


async def test_no_requests_give_no_scores(scorer: Scorer) -> None:
    assert await scorer.score([]) == []


async def test_rows_that_once_failed_their_batch_mates_now_leave_them_answered(
    generator: Generator,
) -> None:
    # A seed at the top of the range (seed * 1_000_003 once overflowed torch's seed) and a
    # schema-valid temperature of 1e-300 (logits / 1e-300 was inf) share batches with greedy rows.
    extreme = [
        SamplingParams(n=2, temperature=0.7, seed=MAX_SEED, max_new_tokens=32),
        SamplingParams(n=2, temperature=1e-300, seed=10**17, max_new_tokens=32),
    ]
    solo = [(await generator.generate([p], GREEDY))[0][0] for p in PROMPTS[:6]]
    calls = [generator.generate([p], GREEDY) for p in PROMPTS[:6]]
    calls += [generator.generate(PROMPTS[6:7], params) for params in extreme]
    out = await asyncio.gather(*calls)
    assert [o[0][0] for o in out[:6]] == solo
    assert all(len(o[0]) == 2 for o in out[6:])
    # Below SAMPLING_EPS is greedy: both "samples" are the greedy completion.
    short = SamplingParams(max_new_tokens=32)
    greedy = (await generator.generate(PROMPTS[6:7], short))[0][0]
    assert [c.text for c in out[7][0]] == [greedy.text, greedy.text]
    assert generator.health().healthy


def test_a_seed_beyond_every_backends_range_is_refused_before_any_batch() -> None:
    with pytest.raises(InputError, match="seed") as info:
        SamplingParams(temperature=0.7, seed=MAX_SEED + 1)
    assert info.value.field == "seed"
