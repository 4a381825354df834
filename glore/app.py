"""The app's composition: the service's app (service/app.py) with the HTTP routes (routers/).

It lives here, above both, because the routes import the service: were the service to include
them, the two packages would import each other. `glore serve`, the tests and
`uvicorn --factory glore.app:create_app` all start from `create_app`.
"""

from __future__ import annotations

from fastapi import FastAPI

from routers import debug, health, solve, traces, ui
from service.app import build_app
from service.pipeline import ServedEngines
from service.settings import Settings


def create_app(settings: Settings | None = None, engines: ServedEngines | None = None) -> FastAPI:
    """The glore app. `engines`, when given, are used as they are (and not closed by the app);
    otherwise the roles in `settings` (default: from GLORE_* variables) are loaded in the
    background after startup, and /ready says 503 until they are."""
    settings = settings or Settings()
    routers = [solve.router, traces.router, health.router, ui.router]
    if settings.debug_faults:  # absent by default: a test checks that it answers 404
        routers.append(debug.router)
    return build_app(settings, engines, routers, public_paths=ui.PUBLIC_PATHS)
