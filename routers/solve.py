"""POST /solve and the OpenAI-compatible POST /v1/chat/completions: thin, the work is in service."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from engines.base import FinishReason
from routers.deps import OwnerDep, SolverDep, StateDep
from service.errors import ErrorCode, field_error, responses
from service.logs import request_id_var
from service.pipeline import PipelineConfig, StrategyName
from service.schemas import (
    ChatChoice,
    ChatChoiceMessage,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatUsage,
    ModelCard,
    ModelList,
    SolveRequest,
    SolveResponse,
)
from service.solver import Loc, Solved, Solver
from service.state import ServiceState

router = APIRouter()

_ERRORS = responses(
    ErrorCode.BAD_REQUEST,  # a body that is not JSON (or not UTF-8)
    ErrorCode.UNAUTHORIZED,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.OVERLOADED,
    ErrorCode.INTERNAL_ERROR,
    ErrorCode.ENGINE_ERROR,
    ErrorCode.ENGINE_UNAVAILABLE,
    ErrorCode.NOT_READY,
    ErrorCode.SHUTTING_DOWN,
    ErrorCode.TIMEOUT,
)


@router.post(
    "/solve",
    response_model=SolveResponse,
    responses=_ERRORS,
    tags=["solve"],
    summary="Solve a math word problem with GLoRe (or a baseline strategy)",
)
async def solve(
    body: SolveRequest, request: Request, solver: SolverDep, owner: OwnerDep
) -> SolveResponse:
    """Draft, score with the ORM and SORM, decide, refine globally and locally at once, and let
    the ORM rerank: the answer comes with every candidate's score, the decision and timings.
    With include_trace, a server that keeps traces keeps this one for `GET /traces/{id}`."""
    question = solver.check_question(body.question, ["body", "question"])
    strategy, cfg = solver.config(
        body,
        n=body.n,
        max_new_tokens=body.max_new_tokens,
        n_loc=["body", "n"],
        tokens_loc=["body", "max_new_tokens"],
    )
    solved = await _run(solver, request, question, strategy, cfg, timeout_s=body.timeout_s)
    result = _solve_response(solved, cfg, include_trace=body.include_trace)
    if body.include_trace:
        solver.state.traces.keep(body, result, owner)
    return result


async def _run(
    solver: Solver,
    request: Request,
    question: str,
    strategy: StrategyName,
    cfg: PipelineConfig,
    *,
    timeout_s: float | None,
    question_loc: Loc | None = None,
) -> Solved:
    """Solve for this HTTP request: cancelled when its client leaves, timed from its admission."""
    return await solver.run(
        question,
        strategy,
        cfg,
        timeout_s=timeout_s,
        is_disconnected=request.is_disconnected,
        admitted_at=getattr(request.state, "admitted_at", None),
        question_loc=question_loc,
    )


def _solve_response(solved: Solved, cfg: PipelineConfig, *, include_trace: bool) -> SolveResponse:
    """/solve's reply, which the chat reply carries whole as `glore`."""
    return SolveResponse.from_solution(
        solved.solution,
        cfg,
        request_id=request_id_var.get(),
        include_trace=include_trace,
        total_s=solved.seconds,
        warnings=solved.warnings,
    )


_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat completion, or with stream=true server-sent events: "
        "`data: <chat.completion.chunk>` lines, then `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**_ERRORS, **_STREAM},
    tags=["openai"],
    summary="OpenAI-compatible chat completion (the last user message is the question)",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: StateDep, solver: SolverDep
) -> ChatCompletionResponse | StreamingResponse:
    """The strategy and knobs come as extra fields (`extra_body` in the openai client):
    strategy, refine, orm_threshold, sorm_threshold, num_samples, seed, include_trace,
    timeout_s. The reply's `glore` field holds the full /solve response."""
    if body.stream_options is not None and not body.stream:
        raise field_error(["body", "stream_options"], "only allowed with stream=true")
    if body.n != 1:
        raise field_error(
            ["body", "n"],
            "only n=1 is supported; for best-of-n use strategy=best_of_n with num_samples",
        )
    users = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not users:
        raise field_error(["body", "messages"], "needs at least one user message")
    question_loc: list[str | int] = ["body", "messages", users[-1], "content"]
    question = solver.check_question(body.messages[users[-1]].text(), question_loc)
    max_tokens = body.max_completion_tokens or body.max_tokens
    tokens_field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    strategy, cfg = solver.config(
        body,
        n=body.num_samples,
        max_new_tokens=max_tokens,
        n_loc=["body", "num_samples"],
        tokens_loc=["body", tokens_field],
    )
    solved = await _run(
        solver,
        request,
        question,
        strategy,
        cfg,
        timeout_s=body.timeout_s,
        question_loc=question_loc,
    )
    winner = solved.solution.winner.candidate
    result = _solve_response(solved, cfg, include_trace=body.include_trace)
    tokens = solved.solution.total_tokens
    usage = ChatUsage(prompt_tokens=0, completion_tokens=tokens, total_tokens=tokens)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = stream_events(
            result, winner.finish_reason, usage if include_usage else None, state
        )
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            # No proxy buffering (nginx) and no caching: each event goes out as it is written.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return ChatCompletionResponse(
        id=f"chatcmpl-{result.request_id}",
        created=int(time.time()),
        model=state.settings.model_name,
        choices=[
            ChatChoice(
                index=0,
                message=ChatChoiceMessage(content=winner.text),
                finish_reason=winner.finish_reason,
            )
        ],
        usage=usage,
        warnings=result.warnings,
        glore=result,
    )


async def stream_events(
    result: SolveResponse,
    finish_reason: FinishReason,
    usage: ChatUsage | None,
    state: ServiceState,
) -> AsyncIterator[str]:
    """The chosen solution as OpenAI chunks: the role, one content delta per step, a chunk with
    finish_reason (and the /solve response as `glore`), the usage chunk when asked, [DONE]."""
    chat_id, created, model = (
        f"chatcmpl-{result.request_id}",
        int(time.time()),
        state.settings.model_name,
    )
    # With include_usage, OpenAI sends `usage: null` on every chunk but the last.
    keep_usage = usage is not None

    def event(
        delta: ChatDelta | None,
        finish: FinishReason | None = None,
        *,
        last_usage: ChatUsage | None = None,
        glore: SolveResponse | None = None,
    ) -> str:
        choices = [] if delta is None else [ChatChunkChoice(delta=delta, finish_reason=finish)]
        chunk = ChatCompletionChunk(
            id=chat_id, created=created, model=model, choices=choices, usage=last_usage, glore=glore
        )
        data = chunk.model_dump(mode="json")
        if not keep_usage:
            data.pop("usage")
        return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"

    yield event(ChatDelta(role="assistant", content=""))
    lines = result.solution.split("\n")
    for i, line in enumerate(lines):
        yield event(ChatDelta(content=line if i == len(lines) - 1 else line + "\n"))
    yield event(ChatDelta(), finish_reason, glore=result)
    if usage is not None:
        yield event(None, last_usage=usage)
    yield "data: [DONE]\n\n"


@router.get("/v1/models", response_model=ModelList, tags=["openai"], summary="The served model")
async def models(state: StateDep) -> ModelList:
    return ModelList(data=[ModelCard(id=state.settings.model_name, created=0)])
