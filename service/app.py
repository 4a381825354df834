"""The service's app, built around the routes it is given: settings, lifespan (engines loaded in
the background), middleware, error handlers, /metrics and graceful SIGTERM. No model is loaded at
import time. Which routes it serves is the composition root's choice (glore/app.py's
create_app), so this package never imports routers/, which import it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import FrameType
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from engines.base import Backend, EngineSpec, Role
from engines.reranker import resolve_reranker
from service.errors import ErrorCode, ErrorDetail, ServiceError
from service.faults import FaultInjector
from service.logs import configure_logging
from service.metrics import Metrics
from service.middleware import (
    PUBLIC_PATHS,
    AdmissionMiddleware,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    RequestContextMiddleware,
)
from service.pipeline import ServedEngines
from service.profile import PROFILE_FILE, read_profile
from service.settings import Settings, check_env, is_loopback, with_run_defaults
from service.state import ServiceState

logger = logging.getLogger(__name__)

_DESCRIPTION = """
GLoRe (Havrilla et al., 2024) as a service: a policy drafts a solution, an outcome reward model
(ORM) and a stepwise one (SORM) score every step, and when the ORM doubts the draft, a global
refiner (a new solution) and a local refiner (restarting at the first step the SORM flags) write
refinements concurrently; the ORM reranks them all.

Every error answers with one body, `{"error": {"code", "message", "request_id", "details"}}`,
and the request id is echoed in `X-Request-Id`. When API keys are configured, every route but
`/health`, `/ready` and the web page (`/ui`) needs `Authorization: Bearer <key>`.
"""

_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.VALIDATION_ERROR,
}


def build_app(
    settings: Settings,
    engines: ServedEngines | None,
    routers: Sequence[APIRouter],
    public_paths: frozenset[str] = frozenset(),
) -> FastAPI:
    """The glore app serving `routers` (in order, then /metrics). `engines`, when given, are
    used as they are (and not closed by the app); otherwise the roles in `settings` are loaded
    in the background after startup, and /ready says 503 until they are. `public_paths` open
    without an API key, as the probes do (the web page's)."""
    configure_logging(settings.log_level, settings.log_json)
    # A misspelt setting (GLORE_API_KEY for GLORE_API_KEYS) must not be ignored in silence.
    check_env()
    settings, sources = with_run_defaults(settings)
    logger.info(
        "default thresholds: %s",
        ", ".join(
            f"{name}={getattr(settings.defaults, name)} ({src})" for name, src in sources.items()
        ),
    )
    # Fail at once on a configuration that names no checkpoints, not later in the background.
    specs = None if engines is not None else settings.engine_specs()
    state = ServiceState(
        settings=settings,
        metrics=Metrics(),
        default_sources=sources,
        public_paths=public_paths,
    )
    # Also at once: an unknown or unreadable reranker is a configuration error.
    state.reranker = resolve_reranker(settings.defaults.reranker, settings.run_dir)
    logger.info("reranker: %s (from %s)", state.reranker.name, settings.defaults.reranker)
    # Also at once: a profile that is there but unreadable is a configuration error.
    state.profile = read_profile(settings.run_dir) if settings.run_dir is not None else None
    if state.profile is None:
        logger.warning(
            "no question profile (%s in the run directory): serving without warnings; "
            "`glore train profile --out RUN` writes one",
            PROFILE_FILE,
        )
    else:
        logger.info(
            "question profile: warnings on %s",
            ", ".join(f"{k}={v}" for k, v in state.profile.thresholds.model_dump().items()),
        )
    if state.traces.enabled:
        logger.info(
            "keeping the last %d solve traces (include_trace) in memory for /traces and /ui",
            state.traces.capacity,
        )
    state.idle.set()
    state.warnings = startup_warnings(settings)
    for warning in state.warnings:
        logger.warning("%s", warning)
    state.metrics.insecure.set(1 if not settings.api_keys and not is_loopback(settings.host) else 0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader: asyncio.Task[None] | None = None
        if engines is not None:
            state.engines = FaultInjector(engines) if settings.debug_faults else engines
            state.role_status()
        else:
            assert specs is not None
            loader = asyncio.create_task(_load(state, specs))
        restore = _install_sigterm(state)
        try:
            yield
        finally:
            restore()
            if loader is not None:
                loader.cancel()
                with contextlib.suppress(BaseException):
                    await loader
                if state.engines is not None:
                    await state.engines.close()

    app = FastAPI(
        title="glore",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.glore = state
    # Added innermost first: a request meets the request id, then auth, then the body limit,
    # then admission control.
    app.add_middleware(AdmissionMiddleware, state=state)
    app.add_middleware(BodyLimitMiddleware, state=state)
    app.add_middleware(ApiKeyMiddleware, state=state)
    app.add_middleware(RequestContextMiddleware, state=state)
    _add_error_handlers(app, state)
    for router in routers:
        app.include_router(router)

    @app.get(
        "/metrics",
        tags=["probes"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    )
    async def metrics() -> Response:
        state.role_status()  # refresh glore_engine_ready
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    state.route_paths = frozenset(
        path for route in app.routes if isinstance(path := getattr(route, "path", None), str)
    )
    _document_auth(app, settings)
    return app


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator should fix before exposing this server (also in /ready's `warnings`)."""
    warnings = []
    if not settings.api_keys and not is_loopback(settings.host):
        warnings.append(
            f"listening on {settings.host} without API keys: anyone who can reach this port "
            "can use it; set GLORE_API_KEYS (or bind to 127.0.0.1 behind a proxy that "
            "authenticates)"
        )
    limits = settings.limits
    if limits.request_timeout_s >= settings.shutdown_timeout_s:
        warnings.append(
            f"request_timeout_s ({limits.request_timeout_s:g}) is not below "
            f"shutdown_timeout_s ({settings.shutdown_timeout_s:g}): a SIGTERM can cut "
            "requests already admitted"
        )
    if settings.debug_faults:
        warnings.append("fault injection is ON (GLORE_DEBUG_FAULTS): for tests only")
    return warnings


async def _load(state: ServiceState, specs: Mapping[Role, EngineSpec]) -> None:
    where = {role.value: f"{spec.backend}:{spec.path}" for role, spec in specs.items()}
    logger.info("loading models", extra={"roles": where})
    start = time.perf_counter()
    try:
        from engines.registry import load_engines_async  # torch and friends: only when serving

        loaded = await load_engines_async(specs, concurrency=state.settings.load_concurrency)
        if state.profile is not None:
            state.question_tokenizer = await asyncio.to_thread(_tokenizer, specs[Role.POLICY])
        state.metrics.watch_upstream(loaded, loaded.roles)
        state.engines = FaultInjector(loaded) if state.settings.debug_faults else loaded
    except Exception as exc:
        state.load_error = str(exc)
        logger.error("model load failed: %s", exc, exc_info=exc)
        return
    seconds = time.perf_counter() - start
    logger.info(
        "models loaded in %.1f s (engines' own loads add up to %.1f s)",
        seconds,
        sum(loaded.load_seconds.values()),
        extra={"engines": loaded.load_seconds},
    )
    for engine, took in loaded.load_seconds.items():
        state.metrics.engine_load.labels(engine=engine).set(took)
    state.metrics.models_load.set(seconds)
    state.role_status()


def _tokenizer(spec: EngineSpec) -> Any:
    if spec.backend == Backend.REMOTE:
        # A replica whose models are all remote imports no torch (transformers would).
        from engines.tokens import LightTokenizer

        return LightTokenizer(str(spec.options.get("tokenizer") or spec.path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.path)


def _add_error_handlers(app: FastAPI, state: ServiceState) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return state.from_error(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            # A body that is not JSON is a bad request (400), as docs/service.md says; a JSON body
            # with a wrong field is a validation error (422).
            where = errors[0].get("ctx", {}).get("error", "invalid JSON")
            return state.error_response(
                ErrorCode.BAD_REQUEST,
                f"the request body is not valid JSON ({where})",
                details=[ErrorDetail(loc=["body"], msg="invalid JSON")],
            )
        details = [
            ErrorDetail(loc=list(e.get("loc", ())), msg=str(e.get("msg", "invalid")))
            for e in errors
        ]
        message = "; ".join(
            f"{'.'.join(str(p) for p in d.loc if p != 'body') or 'body'}: {d.msg}"
            for d in details[:5]
        )
        return state.error_response(ErrorCode.VALIDATION_ERROR, message, details=details)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.INTERNAL_ERROR)
        return state.error_response(code, str(exc.detail), headers=dict(exc.headers or {}))

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def _document_auth(app: FastAPI, settings: Settings) -> None:
    """Declare the bearer scheme in the OpenAPI document when keys are configured."""
    if not settings.api_keys:
        return

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        # ErrorBody is in the schema already: the solve routes document their errors with it.
        unauthorized = {
            "description": ErrorCode.UNAUTHORIZED.value,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for path, operations in schema.get("paths", {}).items():
            if path not in PUBLIC_PATHS:
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation.setdefault("responses", {}).setdefault("401", unauthorized)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_Handler = Callable[[int, FrameType | None], Any] | int | None
# After a drain that outlasted shutdown_delay_s, the 503s still go on this long (at most the delay).
_LINGER_S = 1.0


def _install_sigterm(state: ServiceState) -> Callable[[], None]:
    """On SIGTERM: /ready turns 503 and new solves are refused; once in-flight solves finish
    (at most `shutdown_timeout_s`, at least `shutdown_delay_s` after the signal, and with a
    delay at least min(1 s, shutdown_delay_s) after the drain), the previous
    handler (uvicorn's) stops the server. A second SIGTERM stops it at once."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: _Handler = signal.getsignal(signal.SIGTERM)
    tasks: set[asyncio.Task[None]] = set()

    async def drain_then_stop(signum: int) -> None:
        settings = state.settings
        start = loop.time()
        try:
            await asyncio.wait_for(state.idle.wait(), settings.shutdown_timeout_s)
        except TimeoutError:
            logger.warning("shutdown timeout: %d requests still in flight", state.in_flight)
        # Keep answering 503 a while longer: load balancers see /ready change, and a client
        # whose answer went out at the end of the drain gets a 503 on its next request over the
        # same connection, not a reset.
        remaining = settings.shutdown_delay_s - (loop.time() - start)
        await asyncio.sleep(max(remaining, min(settings.shutdown_delay_s, _LINGER_S)))
        logger.info("drained; stopping")
        _chain(previous, signum)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if state.draining:
            _chain(previous, signum)
            return
        state.draining = True
        logger.warning("SIGTERM: draining %d in-flight requests", state.in_flight)
        task = loop.create_task(drain_then_stop(signum))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return restore


def _chain(previous: _Handler, signum: int) -> None:
    if callable(previous):
        previous(signum, None)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
