"""From a validated request to a pipeline result: limits, config, timeout, cancellation, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engines.base import EngineError, Generator, InputError, Role
from engines.text import TextContractError, clean_question
from service.errors import ErrorCode, ServiceError, field_error
from service.logs import request_id_var
from service.pipeline import REQUIRED_ROLES, Engines, PipelineConfig, Solution, StrategyName, solve
from service.profile import QuestionWarning, check, read_questions
from service.schemas import Knobs
from service.state import ServiceState

logger = logging.getLogger(__name__)

Loc = list[str | int]
IsDisconnected = Callable[[], Awaitable[bool]]

_DISCONNECT_POLL_S = 0.1


@dataclass(frozen=True)
class Solved:
    """What a solve gives a route: the pipeline's Solution, the question's warnings (from the
    run's profile) and the solve's wall time in seconds."""

    solution: Solution
    warnings: list[QuestionWarning]
    seconds: float


class Solver:
    """Runs one solve for a route, within the server's limits."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def check_question(self, question: str, loc: Loc) -> str:
        """The question as every model will see it (engines.text.clean_question), or a 422 at
        `loc`; the solve takes this cleaned text, so the question is cleaned once, here."""
        limit = self.state.settings.limits.max_question_chars
        if len(question) > limit:
            raise field_error(loc, f"question is {len(question)} characters; the limit is {limit}")
        try:
            return clean_question(question)
        except TextContractError as exc:
            raise field_error(loc, str(exc)) from None

    def config(
        self,
        knobs: Knobs,
        *,
        n: int | None,
        max_new_tokens: int | None,
        n_loc: Loc,
        tokens_loc: Loc,
    ) -> tuple[StrategyName, PipelineConfig]:
        """The request's knobs over the server's defaults, within the server's limits."""
        limits, defaults = self.state.settings.limits, self.state.settings.defaults
        if max_new_tokens is not None and max_new_tokens > limits.max_new_tokens:
            raise field_error(tokens_loc, f"must be at most {limits.max_new_tokens}")
        if n is not None and n > limits.max_n:
            raise field_error(n_loc, f"must be at most {limits.max_n}")
        return knobs.pipeline_config(
            defaults,
            limits=limits,
            reranker=self.state.reranker,
            n=n,
            max_new_tokens=max_new_tokens,
        )

    async def run(
        self,
        question: str,
        strategy: StrategyName,
        cfg: PipelineConfig,
        *,
        timeout_s: float | None,
        is_disconnected: IsDisconnected,
        question_loc: Loc | None = None,
        admitted_at: float | None = None,
    ) -> Solved:
        """Solve `question` (as check_question returned it), or raise: 503 not ready, 504 past
        the time limit, 499 when the client left (the work is cancelled), 422 naming the field
        when a model cannot take the request's input, 500 when a model (or our code) fails, 503
        when a model died. Each route renders the result as its own wire model."""
        engines = self.state.check_ready(admitted=True, roles=REQUIRED_ROLES[strategy])
        limit = min(self.state.settings.limits.request_timeout_s, timeout_s or math.inf)
        left = limit
        if admitted_at is not None:  # the time spent in line counts against the limit
            left = max(0.0, limit - (time.monotonic() - admitted_at))
        logger.debug("solving", extra={"question": question, "strategy": strategy.value})
        start = time.perf_counter()
        work = asyncio.create_task(self._solve_and_check(question, engines, cfg, strategy))
        watcher = asyncio.create_task(_wait_for_disconnect(is_disconnected))
        try:
            done, _ = await asyncio.wait(
                {work, watcher}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            # Also reached when this handler itself is cancelled: no work outlives its request.
            for task in (work, watcher):
                task.cancel()
            for task in (work, watcher):
                with contextlib.suppress(BaseException):
                    await task
        if work not in done:
            if watcher in done:
                logger.info("client disconnected; solve cancelled")
                raise ServiceError(ErrorCode.CLIENT_DISCONNECTED, "client disconnected")
            raise ServiceError(
                ErrorCode.TIMEOUT, f"the solve did not finish within {limit:g} s; it was cancelled"
            )
        try:
            solution, warnings = work.result()
        except EngineError as exc:
            logger.error("engine failed: %s", exc, exc_info=exc)
            raise self._engine_failure(exc, REQUIRED_ROLES[strategy]) from None
        except (TextContractError, InputError) as exc:
            # The request's own input: a 422 naming the field (our message, never a library's).
            field = exc.field if isinstance(exc, InputError) else None
            loc: Loc = ["body", "seed"] if field == "seed" else question_loc or ["body", "question"]
            logger.info("a model refused the request's input: %s", exc)
            raise field_error(loc, f"the models cannot take this request: {exc}") from None
        except Exception as exc:
            # Anything else (a library's ValueError, a bug of ours) is the server's failure:
            # a generic 500, so the error-ratio alert sees it and no internal text leaks.
            logger.error("solve failed: %r", exc, exc_info=exc)
            raise ServiceError(
                ErrorCode.INTERNAL_ERROR,
                f"internal error; see the server logs for request {request_id_var.get()}",
            ) from None
        total = time.perf_counter() - start
        self.state.metrics.observe_solution(solution)
        self.state.metrics.observe_warnings(w.code.value for w in warnings)
        logger.info(
            "solved",
            extra={
                "strategy": strategy.value,
                "winner": solution.winner.candidate.label,
                "decision": solution.plan.action.value,
                "tokens": solution.total_tokens,
                "warnings": [w.code.value for w in warnings],
                "dropped": [f"{d.label}@{d.stage.value}" for d in solution.dropped],
                "duration_ms": round(total * 1000, 1),
            },
        )
        return Solved(solution, warnings, total)

    async def _solve_and_check(
        self, question: str, engines: Engines, cfg: PipelineConfig, strategy: StrategyName
    ) -> tuple[Solution, list[QuestionWarning]]:
        """The solve, and beside it the question checked against the run's profile. The check
        reads the question only: it cannot change the answer."""
        check = asyncio.create_task(self._warnings(question, engines.policy))
        try:
            solution = await solve(question, engines, cfg, strategy)
        except BaseException:
            check.cancel()
            with contextlib.suppress(BaseException):
                await check
            raise
        return solution, await check

    async def _warnings(self, question: str, policy: Generator) -> list[QuestionWarning]:
        profile, tokenizer = self.state.profile, self.state.question_tokenizer
        if profile is None or tokenizer is None:
            return []
        try:
            [reading] = await read_questions([question], tokenizer, profile.known(), policy)
        except Exception as exc:
            # A check that fails says nothing about the question, and must not cost the answer
            # (a question too long for the reading fails the draft anyway, with its own 422).
            logger.warning("question check failed: %s", exc, exc_info=exc)
            return []
        return check(reading, profile)

    def _engine_failure(self, exc: EngineError, roles: frozenset[Role]) -> ServiceError:
        """503 naming the models among `roles` (the strategy's) that are now dead (/ready says
        so too), 500 when a model failed one call but still reports healthy."""
        request_id = request_id_var.get()
        dead = [
            role.value
            for role, (healthy, _) in self.state.role_status().items()
            if not healthy and role in roles
        ]
        if dead:
            return ServiceError(
                ErrorCode.ENGINE_UNAVAILABLE,
                f"a model stopped serving ({', '.join(dead)}); see the server logs for request "
                f"{request_id}",
                headers={"Retry-After": str(self.state.settings.limits.retry_after_s)},
            )
        return ServiceError(
            ErrorCode.ENGINE_ERROR,
            f"a model failed while solving{f' ({exc.role})' if exc.role else ''}; "
            f"see the server logs for request {request_id}",
        )


async def _wait_for_disconnect(is_disconnected: IsDisconnected) -> None:
    while not await is_disconnected():
        await asyncio.sleep(_DISCONNECT_POLL_S)
