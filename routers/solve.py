"""POST /solve and the OpenAI-compatible POST /v1/chat/completions: thin, the work is in service."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.errors import ErrorCode, field_error, responses
from service.schemas import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatUsage,
    ModelCard,
    ModelList,
    SolveRequest,
    SolveResponse,
)
from service.solver import Solver
from service.state import ServiceState, get_state

router = APIRouter()

StateDep = Annotated[ServiceState, Depends(get_state)]

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
async def solve(body: SolveRequest, request: Request, state: StateDep) -> SolveResponse:
    """Draft, score with the ORM and SORM, decide, refine globally and locally at once, and let
    the ORM rerank: the answer comes with every candidate's score, the decision and timings."""
    solver = Solver(state)
    question = solver.check_question(body.question, ["body", "question"])
    strategy, cfg = solver.config(
        body,
        n=body.n,
        max_new_tokens=body.max_new_tokens,
        n_loc=["body", "n"],
        tokens_loc=["body", "max_new_tokens"],
    )
    return await solver.run(
        question,
        strategy,
        cfg,
        include_trace=body.include_trace,
        timeout_s=body.timeout_s,
        is_disconnected=request.is_disconnected,
        admitted_at=getattr(request.state, "admitted_at", None),
    )


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=_ERRORS,
    tags=["openai"],
    summary="OpenAI-compatible chat completion (the last user message is the question)",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: StateDep
) -> ChatCompletionResponse:
    """The strategy and knobs come as extra fields (`extra_body` in the openai client):
    strategy, refine, orm_threshold, sorm_threshold, num_samples, seed, include_trace,
    timeout_s. The reply's `glore` field holds the full /solve response."""
    if body.stream:
        raise field_error(["body", "stream"], "streaming is not supported")
    if body.n != 1:
        raise field_error(
            ["body", "n"],
            "only n=1 is supported; for best-of-n use strategy=best_of_n with num_samples",
        )
    users = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not users:
        raise field_error(["body", "messages"], "needs at least one user message")
    solver = Solver(state)
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
    result = await solver.run(
        question,
        strategy,
        cfg,
        include_trace=body.include_trace,
        timeout_s=body.timeout_s,
        is_disconnected=request.is_disconnected,
        admitted_at=getattr(request.state, "admitted_at", None),
        question_loc=question_loc,
    )
    winner = next(c for c in result.candidates if c.label == result.winner)
    return ChatCompletionResponse(
        id=f"chatcmpl-{result.request_id}",
        created=int(time.time()),
        model=state.settings.model_name,
        choices=[
            ChatChoice(
                index=0,
                message=ChatChoiceMessage(content=result.solution),
                finish_reason=winner.finish_reason,
            )
        ],
        usage=ChatUsage(
            prompt_tokens=0,
            completion_tokens=result.usage.completion_tokens,
            total_tokens=result.usage.completion_tokens,
        ),
        glore=result,
    )


@router.get("/v1/models", response_model=ModelList, tags=["openai"], summary="The served model")
async def models(state: StateDep) -> ModelList:
    return ModelList(data=[ModelCard(id=state.settings.model_name, created=0)])
