"""GET /health (liveness) and GET /ready (503 until every role is loaded and healthy)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from routers.deps import StateDep
from service.errors import ErrorCode, ServiceError, responses
from service.schemas import Health, Ready, RoleStatus, ThresholdDefault

router = APIRouter(tags=["probes"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Ready,
    responses=responses(ErrorCode.NOT_READY, ErrorCode.SHUTTING_DOWN),
    summary="Readiness: every role loaded and healthy, and not shutting down",
)
async def ready(state: StateDep) -> Ready | JSONResponse:
    try:
        state.check_ready()
    except ServiceError as exc:
        return state.from_error(exc, count=False)
    return Ready(
        roles={
            role.value: RoleStatus(healthy=ok, detail=detail)
            for role, (ok, detail) in state.role_status().items()
        },
        defaults={
            name: ThresholdDefault(value=getattr(state.settings.defaults, name), source=source)
            for name, source in state.default_sources.items()
        },
        warnings=state.warnings,
    )
