"""What the routes depend on, declared once: the app's state, and a solver over it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from service.solver import Solver
from service.state import ServiceState, get_state

StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_solver(state: StateDep) -> Solver:
    return Solver(state)


SolverDep = Annotated[Solver, Depends(get_solver)]
