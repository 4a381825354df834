"""GET /traces/{request_id}: a kept /solve (request and response), for its key only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from routers.deps import OwnerDep, StateDep
from service.errors import ErrorCode, responses
from service.schemas import StoredTrace

router = APIRouter(tags=["traces"])


@router.get(
    "/traces/{request_id}",
    response_model=StoredTrace,
    responses=responses(ErrorCode.UNAUTHORIZED, ErrorCode.NOT_FOUND, ErrorCode.VALIDATION_ERROR),
    summary="A recent /solve made with include_trace, by its request id (same API key only)",
)
async def trace(
    request_id: Annotated[str, Path(min_length=1, max_length=128)],
    state: StateDep,
    owner: OwnerDep,
) -> StoredTrace:
    """The server keeps the last `GLORE_TRACES__KEEP` solves made with include_trace, in memory
    only; each is readable with the API key that made it, and with no other (404)."""
    return state.traces.find(request_id, owner)
