"""The engine calls a /solve makes, recorded in-process and made again directly on the same
engines: what glore costs over them one request at a time (the c1 overhead), and the throughput
the engines allow for the same requests at the bench's highest concurrency (glore's limit)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

# A solve's engine calls, grouped into phases: the calls of a phase ran concurrently.
Plan = list[list[dict[str, Any]]]
# The roles each kind of model server serves in a remote deployment.
SIDES = {"generators": ("policy", "refine_global", "refine_local"), "scorers": ("orm", "sorm")}


def pipeline_config(body: dict[str, Any], run_dir: Path) -> tuple[Any, Any]:
    """The strategy and PipelineConfig the server builds for `body`: the same function, over
    the defaults and reranker it takes from the run (serving.json, reranker/default.json). Its
    limits are raised to fit every body (bench_service's env), so none apply here."""
    from engines.reranker import resolve_reranker
    from service.schemas import SolveRequest
    from service.settings import Settings, with_run_defaults

    settings, _ = with_run_defaults(Settings(run_dir=run_dir))
    request = SolveRequest.model_validate(body)
    return request.pipeline_config(
        settings.defaults,
        limits=None,
        reranker=resolve_reranker(settings.defaults.reranker, run_dir),
        n=request.n,
        max_new_tokens=request.max_new_tokens,
    )


class _Recorder:
    """Engines that record every call (what, and when), so the calls can be replayed raw."""

    def __init__(self, engines: Any) -> None:
        self.engines = engines
        self.calls: list[dict[str, Any]] = []

    def _wrap(self, role: str) -> Any:
        engine = getattr(self.engines, role)
        recorder = self

        class Wrapped:
            name = engine.name

            async def generate(self, prompts: Any, params: Any) -> Any:
                return await recorder._record(role, "generate", (list(prompts), params))

            async def score(self, requests: Any) -> Any:
                return await recorder._record(role, "score", (list(requests),))

            async def logprobs(self, requests: Any) -> Any:
                return await recorder._record(role, "logprobs", (list(requests),))

        return Wrapped()

    async def _record(self, role: str, method: str, call_args: tuple[Any, ...]) -> Any:
        start = time.perf_counter()
        result = await getattr(getattr(self.engines, role), method)(*call_args)
        self.calls.append(
            {"role": role, "method": method, "args": call_args, "start": start}
            | {"end": time.perf_counter()}
        )
        return result

    def __getattr__(self, role: str) -> Any:
        if role in ("policy", "orm", "sorm", "refine_global", "refine_local"):
            return self._wrap(role)
        raise AttributeError(role)


def phases(calls: list[dict[str, Any]]) -> Plan:
    """Calls grouped as the pipeline ran them: calls that overlapped in time ran concurrently."""
    out: Plan = []
    end = -1.0
    for call in sorted(calls, key=lambda c: c["start"]):
        if out and call["start"] < end:
            out[-1].append(call)
            end = max(end, call["end"])
        else:
            out.append([call])
            end = call["end"]
    return out


# The server's question check beside a solve: (question, the policy) -> its one engine call.
Check = Callable[[str, Any], Awaitable[Any]]


def question_check(run_dir: Path, policy_spec: Any) -> Check | None:
    """What /solve runs beside the pipeline when the run has a question profile: one read of
    the question's log-probabilities by the policy (service.solver's warnings), so the direct
    calls hold every engine call the server makes. None when the run has no profile."""
    from service.app import _tokenizer  # the tokenizer the server reads questions with
    from service.profile import read_profile, read_questions

    profile = read_profile(run_dir)
    if profile is None:
        return None
    tokenizer, known = _tokenizer(policy_spec), profile.known()

    async def check(question: str, policy: Any) -> Any:
        return await read_questions([question], tokenizer, known, policy)

    return check


async def record(
    engines: Any, run_dir: Path, body: dict[str, Any], check: Check | None = None
) -> Plan:
    """The engine calls the server makes for `body` (its pipeline, and the question check
    beside it), run here on `engines`."""
    from service.pipeline import solve

    recorder = _Recorder(engines)
    strategy_name, cfg = pipeline_config(body, run_dir)
    jobs = [solve(body["question"], recorder, cfg, strategy_name)]
    if check is not None:
        jobs.append(check(body["question"], recorder.policy))
    await asyncio.gather(*jobs)
    return phases(recorder.calls)


async def replay(engines: Any, plan: Plan) -> tuple[float, int]:
    """The wall time of the same engine calls, made directly, phase by phase, and the tokens
    they generated."""
    start = time.perf_counter()
    tokens = 0
    for phase in plan:
        results = await asyncio.gather(
            *(getattr(getattr(engines, c["role"]), c["method"])(*c["args"]) for c in phase)
        )
        for call, result in zip(phase, results, strict=True):
            if call["method"] == "generate":
                tokens += sum(c.num_tokens for per_prompt in result for c in per_prompt)
    return time.perf_counter() - start, tokens


async def _at_once(items: int, concurrency: int, work: Any) -> float:
    """`work(i)` for every item, `concurrency` at a time (as the bench's clients send them);
    the wall time."""
    queue = iter(range(items))

    async def worker() -> None:
        for i in queue:
            await work(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def record_plans(
    engines: Any,
    run_dir: Path,
    bodies: Sequence[dict[str, Any]],
    concurrency: int,
    check: Check | None = None,
) -> list[Plan]:
    """Each body's plan, `concurrency` solves at once as the server ran them (each solve's
    calls recorded apart, so its phases are its own)."""
    plans: list[Plan] = [[] for _ in bodies]

    async def one(i: int) -> None:
        plans[i] = await record(engines, run_dir, bodies[i], check)

    await _at_once(len(bodies), concurrency, one)
    return plans


async def limit(engines: Any, plans: Sequence[Plan], concurrency: int) -> dict[str, Any]:
    """The plans made directly on the engines, `concurrency` in flight at once, as the bench's
    clients send /solve requests: the requests/s the engines allow for this token mix, with
    no HTTP, no admission, no pipeline in between."""
    tokens = [0] * len(plans)

    async def one(i: int) -> None:
        _, tokens[i] = await replay(engines, plans[i])

    wall = await _at_once(len(plans), concurrency, one)
    calls = [sum(len(p) for p in plan) for plan in plans]
    return {
        "concurrency": concurrency,
        "requests": len(plans),
        "wall_s": wall,
        "throughput_rps": len(plans) / wall,
        "engine_calls_per_request": sum(calls) / len(calls),
        "tokens_per_request": sum(tokens) / len(tokens),
    }


def only(plans: Sequence[Plan], roles: Sequence[str]) -> list[Plan]:
    """The plans' calls to `roles` alone, in their phases and order (an emptied phase
    dropped): the load one kind of model server sees from these requests."""
    return [
        [kept for phase in plan if (kept := [c for c in phase if c["role"] in roles])]
        for plan in plans
    ]


async def overhead(
    url: str,
    run_dir: Path,
    engines: Any,
    bodies: dict[str, list[dict[str, Any]]],
    check: Check | None = None,
) -> dict[str, Any]:
    """/solve against the raw engine calls it makes, question by question, interleaved (the
    server idles while the engines run in-process, and the other way round)."""
    import httpx

    from bench import percentile

    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for strategy, items in bodies.items():
            solve_s, raw_s, calls = [], [], []
            for body in items:
                plan = await record(engines, run_dir, body, check)
                raw_s.append((await replay(engines, plan))[0])
                t = time.perf_counter()
                r = await client.post("/solve", json=body)
                solve_s.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"/solve answered {r.status_code}: {r.text[:300]}")
                calls.append(sum(len(p) for p in plan))
            out[strategy] = {
                "questions": len(items),
                "engine_calls_per_solve": sum(calls) / len(calls),
                "solve_mean_s": sum(solve_s) / len(solve_s),
                "raw_mean_s": sum(raw_s) / len(raw_s),
                "ratio": sum(solve_s) / sum(raw_s),
                "ratio_median": percentile(
                    [s / r for s, r in zip(solve_s, raw_s, strict=True)], 0.5
                ),
            }
    return out
