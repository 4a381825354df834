"""What the routes depend on, declared once: the app's state, a solver over it, and the
request's owner (whose traces it may keep and read)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.solver import Solver
from service.state import ANONYMOUS, ServiceState, get_state

StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_solver(state: StateDep) -> Solver:
    return Solver(state)


SolverDep = Annotated[Solver, Depends(get_solver)]


def get_owner(request: Request) -> str:
    """Whose traces a request keeps and reads: its API key's digest (one anonymous owner on a
    server without keys)."""
    owner: str = getattr(request.state, "api_key_owner", ANONYMOUS)
    return owner


OwnerDep = Annotated[str, Depends(get_owner)]
