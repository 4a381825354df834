"""What only the transformers backend promises: micro-batching, device choice, closing."""

from __future__ import annotations

import asyncio

import pytest

from engines.base import EngineError, SamplingParams
from engines.hf import HFGenerator, HFOptions, HFScorer, resolve_device
from engines.text import policy_prompt
from tests.support.tiny_models import TinyCheckpoints, tiny_problems

PROMPTS = [policy_prompt(p.question) for p in tiny_problems(16, seed=303)]


async def test_sixteen_concurrent_callers_share_batches(tiny_checkpoints: TinyCheckpoints) -> None:
    gen = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", batch_wait_ms=20))
    try:
        params = SamplingParams(max_new_tokens=48)
        results = await asyncio.gather(*(gen.generate([p], params) for p in PROMPTS))
        assert len(results) == 16
        stats = gen.batcher.stats
        assert stats.items == 16
        assert stats.largest_batch > 1
    finally:
        await gen.close()


async def test_a_request_arriving_mid_batch_starts_before_the_batch_ends(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    gen = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu"))
    try:
        # Sampled at temperature 2 with no stop, the tiny policy rambles: some of the 40 samples
        # run for well over a hundred tokens (how many depends on the weights, which differ by
        # machine), while the late request needs two.
        long = SamplingParams(n=40, temperature=2.0, seed=1, max_new_tokens=300, stop=())
        first = asyncio.create_task(gen.generate([PROMPTS[0]], long))
        while gen.batcher.stats.items < 40:  # the long batch is decoding
            await asyncio.sleep(0.001)
        late = await gen.generate([PROMPTS[1]], SamplingParams(max_new_tokens=2))
        # Under static batching the late call would wait for the whole long batch.
        assert not first.done(), "the late request waited for the running batch to finish"
        assert late[0][0].num_tokens == 2
        assert gen.batcher.stats.joined_running == 1
        done = await first
        assert max(c.num_tokens for c in done[0]) > 20 * late[0][0].num_tokens
    finally:
        await gen.close()


async def test_a_caller_cancelled_mid_batch_leaves_the_others_running(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    gen = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu"))
    try:
        long = SamplingParams(n=3, temperature=1.0, seed=2, max_new_tokens=200, stop=())
        doomed = asyncio.create_task(gen.generate([PROMPTS[2]], long))
        kept = asyncio.create_task(gen.generate([PROMPTS[3]], SamplingParams(max_new_tokens=40)))
        while gen.batcher.running < 4:
            await asyncio.sleep(0.001)
        doomed.cancel()
        alone = await gen.generate([PROMPTS[3]], SamplingParams(max_new_tokens=40))
        assert (await kept)[0][0].text == alone[0][0].text
        with pytest.raises(asyncio.CancelledError):
            await doomed
        while gen.batcher.running:
            await asyncio.sleep(0.001)
    finally:
        await gen.close()


async def test_a_row_that_breaks_the_model_fails_alone_in_its_micro_batch(
    tiny_checkpoints: TinyCheckpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poison row (here: one whose forward pass raises, as an OOM or a CUDA error would) fails
    its own call; the good rows of the same micro-batch are retried alone and answered."""
    gen = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", batch_wait_ms=50))
    poison = policy_prompt("POISON: how many apples are left?")
    real_prefill = gen._prefill

    def prefill(rows):  # type: ignore[no-untyped-def]
        if any(r.prompt == poison for r in rows):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_prefill(rows)

    monkeypatch.setattr(gen, "_prefill", prefill)
    try:
        params = SamplingParams(max_new_tokens=48)
        solo = [(await gen.generate([p], params))[0][0] for p in PROMPTS[:7]]
        calls = [gen.generate([p], params) for p in PROMPTS[:3]]
        calls += [gen.generate([poison], params)]
        calls += [gen.generate([p], params) for p in PROMPTS[3:7]]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[3], RuntimeError)
        good = [r for i, r in enumerate(results) if i != 3]
        assert [r[0][0] for r in good] == solo  # type: ignore[index]
        assert gen.batcher.stats.largest_batch > 1 and gen.batcher.retried_batches >= 1
        assert gen.health().healthy
    finally:
        await gen.close()


async def test_a_closed_engine_reports_unhealthy_and_refuses_calls(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    scorer = HFScorer(tiny_checkpoints.scorer, HFOptions(device="cpu"))
    assert scorer.health().healthy
    await scorer.close()
    assert not scorer.health().healthy
    from engines.base import ScoreRequest

    with pytest.raises(EngineError, match="closed"):
        await scorer.score([ScoreRequest("How many?", ("1 + 1 = 2", "The answer is 2."))])


def test_auto_device_picks_cuda_only_when_a_gpu_is_present() -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


def test_an_unknown_dtype_is_refused_by_name(tiny_checkpoints: TinyCheckpoints) -> None:
    from engines.base import EngineLoadError

    with pytest.raises(EngineLoadError, match="dtype"):
        HFGenerator(tiny_checkpoints.policy, HFOptions(dtype="float8"))


def test_the_engine_serves_successive_event_loops(tiny_checkpoints: TinyCheckpoints) -> None:
    """Training code calls asyncio.run per step; one loaded engine must serve them all."""
    gen = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu"))
    params = SamplingParams(max_new_tokens=32)
    first = asyncio.run(gen.generate(PROMPTS[:2], params))
    second = asyncio.run(gen.generate(PROMPTS[:2], params))
    assert first == second
    asyncio.run(gen.close())


async def test_an_overlong_prompt_fails_only_its_own_call(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    gen = HFGenerator(str(tiny_checkpoints.policy), HFOptions(batch_wait_ms=50.0))
    try:
        good = policy_prompt(tiny_problems(1, seed=3)[0].question)
        huge = policy_prompt("many " * (gen.max_positions + 10))
        params = SamplingParams(max_new_tokens=8)
        # Submitted together, inside one batching window: they would share a batch.
        ok, bad = await asyncio.gather(
            gen.generate([good], params), gen.generate([huge], params), return_exceptions=True
        )
        assert isinstance(bad, ValueError) and "tokens, the model takes" in str(bad)
        assert not isinstance(ok, BaseException) and ok[0][0].num_tokens > 0
    finally:
        await gen.close()
