"""Test-only fault injection (present only with GLORE_DEBUG_FAULTS=true): kill or hold a role's
engine."""

from __future__ import annotations

from fastapi import APIRouter

from engines.base import Role
from routers.deps import StateDep
from service.errors import ErrorCode, ServiceError
from service.faults import FaultInjector
from service.schemas import Killed

router = APIRouter(tags=["debug"], include_in_schema=False)


@router.post("/debug/engines/{role}/kill", response_model=Killed)
async def kill_engine(role: Role, state: StateDep) -> Killed:
    """Make `role`'s engine die: calls in flight fail, /ready turns 503."""
    if not isinstance(state.engines, FaultInjector):
        raise ServiceError(ErrorCode.NOT_READY, "the engines are not loaded yet")
    return Killed(roles=[r.value for r in state.engines.kill(role)])


@router.post("/debug/engines/{role}/hold", response_model=Killed)
async def hold_engine(role: Role, state: StateDep) -> Killed:
    """Make calls to `role`'s engine wait until released: solves stay in flight."""
    if not isinstance(state.engines, FaultInjector):
        raise ServiceError(ErrorCode.NOT_READY, "the engines are not loaded yet")
    return Killed(roles=[r.value for r in state.engines.hold(role, True)])


@router.post("/debug/engines/{role}/release", response_model=Killed)
async def release_engine(role: Role, state: StateDep) -> Killed:
    """Let the held calls to `role`'s engine go on."""
    if not isinstance(state.engines, FaultInjector):
        raise ServiceError(ErrorCode.NOT_READY, "the engines are not loaded yet")
    return Killed(roles=[r.value for r in state.engines.hold(role, False)])
