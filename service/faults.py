"""Fault injection for robustness tests: kill or hold one role's engine under a running server.

Off unless `GLORE_DEBUG_FAULTS=true`. Then every engine is wrapped, and killing one fails its
calls in flight with an EngineError at once (as a crashed worker would), marks it unhealthy and
closes the real engine in the background, so /ready turns 503 and later solves are refused.
Holding one makes its calls wait until it is released: a test can keep a solve in flight (its
body read, its slot taken) for as long as it likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from engines.base import (
    ByRole,
    Completion,
    Engine,
    EngineError,
    EngineHealth,
    Generator,
    LikelihoodRequest,
    Role,
    SamplingParams,
    Scorer,
    ScoreRequest,
    StepScores,
    TokenLogprobs,
)
from service.pipeline import ServedEngines

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Killable:
    """One real engine (maybe shared by several roles) that can be made to die."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.killed = asyncio.Event()
        self.released = asyncio.Event()
        self.released.set()
        self.closing: asyncio.Task[None] | None = None

    def health(self) -> EngineHealth:
        if self.killed.is_set():
            return EngineHealth(False, "killed by fault injection")
        return self.inner.health()

    async def close(self) -> None:
        if self.closing is not None:
            await self.closing
        else:
            await self.inner.close()

    def kill(self) -> None:
        if self.killed.is_set():
            return
        self.killed.set()
        self.closing = asyncio.ensure_future(self.inner.close())

    async def _call(self, work: Awaitable[T]) -> T:
        if not self.released.is_set():
            try:
                await self.released.wait()
            except BaseException:
                if asyncio.iscoroutine(work):
                    work.close()
                raise
        if self.killed.is_set():
            if asyncio.iscoroutine(work):
                work.close()
            raise EngineError(f"{self.name} was killed")
        call = asyncio.ensure_future(work)
        died = asyncio.ensure_future(self.killed.wait())
        try:
            await asyncio.wait({call, died}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # The caller was cancelled (a client hung up, a timeout): the call is a task of its
            # own, so it must be cancelled too, or the engine goes on with work nobody awaits.
            call.cancel()
            raise
        finally:
            died.cancel()
        if call.done():
            return call.result()
        # The engine died under this call: its work is dropped and the caller sees the failure.
        call.cancel()
        with contextlib.suppress(BaseException):
            await call
        raise EngineError(f"{self.name} died while serving a call")


class _KillableGenerator(_Killable):
    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        inner = self.inner
        assert isinstance(inner, Generator)
        return await self._call(inner.generate(prompts, params))

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        inner = self.inner
        assert isinstance(inner, Generator)
        return await self._call(inner.logprobs(requests))


class _KillableScorer(_Killable):
    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        inner = self.inner
        assert isinstance(inner, Scorer)
        return await self._call(inner.score(requests))


class FaultInjector(ByRole):
    """An engine set whose engines can be killed one at a time (roles sharing one die together)."""

    def __init__(self, engines: ServedEngines) -> None:
        self.inner = engines
        self._by_role: dict[Role, _Killable] = {}
        by_engine: dict[int, _Killable] = {}
        for role in Role:
            engine: Any = getattr(engines, role.value)
            wrapper = _KillableScorer if role.is_scorer else _KillableGenerator
            self._by_role[role] = by_engine.setdefault(id(engine), wrapper(engine))

    def generator(self, role: Role) -> Generator:
        engine = self._by_role[role]
        assert isinstance(engine, _KillableGenerator)
        return engine

    def scorer(self, role: Role) -> Scorer:
        engine = self._by_role[role]
        assert isinstance(engine, _KillableScorer)
        return engine

    def health(self) -> dict[Role, EngineHealth]:
        health = self.inner.health()
        for role, engine in self._by_role.items():
            if engine.killed.is_set():
                health[role] = engine.health()
        return health

    def kill(self, role: Role) -> list[Role]:
        """Kill `role`'s engine; returns every role it served."""
        target = self._by_role[role]
        target.kill()
        roles = [r for r, e in self._by_role.items() if e is target]
        logger.warning(
            "fault injection: killed the engine of %s", ", ".join(r.value for r in roles)
        )
        return roles

    def hold(self, role: Role, held: bool) -> list[Role]:
        """Make calls to `role`'s engine wait (held) or go on (released); returns its roles."""
        target = self._by_role[role]
        if held:
            target.released.clear()
        else:
            target.released.set()
        return [r for r, e in self._by_role.items() if e is target]

    async def close(self) -> None:
        await asyncio.gather(
            *(e.closing for e in self._by_role.values() if e.closing is not None),
            return_exceptions=True,
        )
        await self.inner.close()
