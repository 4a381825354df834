"""The app's live state (settings, metrics, engines, readiness, draining, in-flight count, the
kept traces) and the one function that turns an error into a response."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from engines.base import Role
from engines.reranker import ORM_RERANKER, Reranker
from service.admission import Admission
from service.errors import STATUS, ErrorCode, ErrorDetail, ServiceError, error_body
from service.logs import request_id_var
from service.metrics import Metrics
from service.pipeline import ServedEngines
from service.profile import QuestionProfile
from service.schemas import SolveRequest, SolveResponse, StoredTrace
from service.settings import DefaultSource, Settings

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- kept traces
# The last N solve traces, for the web page's trace links (`/ui?request_id=…`). Off unless
# `traces.keep` is set; never written to disk. Each trace is filed under the API key that made
# it (a digest of it), so one key can neither read nor overwrite another's.

# The owner of traces made without API keys (a server without keys has one anonymous user).
ANONYMOUS = ""


def key_owner(token: str) -> str:
    """Whom a bearer key's traces belong to: a digest, so the store never holds a key itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class TraceStore:
    """At most `capacity` traces, all owners together; the oldest is dropped first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._traces: OrderedDict[tuple[str, str], StoredTrace] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._traces)

    def keep(self, request: SolveRequest, response: SolveResponse, owner: str) -> None:
        """File a solve under `owner`, stamped now (a no-op when off). A request id sent again
        by the same owner replaces its older trace; another owner's id never touches it."""
        if not self.enabled:
            return
        trace = StoredTrace(
            request_id=response.request_id,
            stored_at=datetime.now(UTC).isoformat(timespec="seconds"),
            request=request,
            response=response,
        )
        slot = (owner, trace.request_id)
        self._traces.pop(slot, None)
        self._traces[slot] = trace
        while len(self._traces) > self.capacity:
            self._traces.popitem(last=False)

    def get(self, request_id: str, owner: str) -> StoredTrace | None:
        return self._traces.get((owner, request_id))

    def find(self, request_id: str, owner: str) -> StoredTrace:
        """`owner`'s trace of `request_id`, or a 404 naming the field and why. Another key's
        trace answers the same 404 as none: whether it exists is not this key's to know."""
        if not self.enabled:
            msg = "this server keeps no traces (set GLORE_TRACES__KEEP to keep the last N)"
        elif (trace := self.get(request_id, owner)) is not None:
            return trace
        else:
            msg = (
                f"no trace of this request is kept for this API key (the server keeps the "
                f"last {self.capacity} solves made with include_trace, in memory, per key)"
            )
        raise ServiceError(
            ErrorCode.NOT_FOUND,
            f"request_id: {msg}",
            details=[ErrorDetail(loc=["path", "request_id"], msg=msg)],
        )


# ---------------------------------------------------------------- the state


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    engines: ServedEngines | None = None
    # What ranks candidates (settings.defaults.reranker, resolved at startup).
    reranker: Reranker = ORM_RERANKER
    load_error: str | None = None
    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    admission: Admission = field(init=False)
    # What the operator should fix (e.g. an open bind without API keys); /ready lists them.
    warnings: list[str] = field(default_factory=list)
    # The app's route paths, so a request refused before routing (401, 413, 429) is still
    # labelled with its route in the latency histogram.
    route_paths: frozenset[str] = frozenset()
    # Which source set each default threshold (settings, the run's serving.json, built-in).
    default_sources: dict[str, DefaultSource] = field(default_factory=dict)
    # The run's question profile (None: no warnings) and the policy's tokenizer it reads with.
    profile: QuestionProfile | None = None
    question_tokenizer: Any = None
    # Paths open without an API key beside the probes: the web page and its files (their
    # routers declare them; the composition root passes them on).
    public_paths: frozenset[str] = frozenset()
    # The last solves made with include_trace, for trace links (off unless traces.keep > 0).
    traces: TraceStore = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.limits, self.settings.defaults, self.metrics)
        self.traces = TraceStore(self.settings.traces.keep)

    def role_status(self) -> dict[Role, tuple[bool, str]]:
        """Each role's health: loading, failed to load, or what its engine says."""
        if self.engines is None:
            detail = f"failed to load: {self.load_error}" if self.load_error else "loading"
            status = {role: (False, detail) for role in Role}
        else:
            health = self.engines.health()
            status = {
                role: (h.healthy, h.detail)
                for role in Role
                for h in [health.get(role)]
                if h is not None
            }
            for role in Role:
                status.setdefault(role, (False, "not loaded"))
        for role, (healthy, _) in status.items():
            self.metrics.engine_ready.labels(role=role.value).set(1 if healthy else 0)
        return status

    def check_ready(
        self, *, admitted: bool = False, roles: Iterable[Role] | None = None
    ) -> ServedEngines:
        """The engines, or a 503 that says why they cannot serve. A request `admitted` before
        a SIGTERM is still served while the server drains. With `roles`, only those must be
        healthy (a solve that never calls a dead model server is not refused for it)."""
        retry = {"Retry-After": str(self.settings.limits.retry_after_s)}
        if self.draining and not admitted:
            raise ServiceError(ErrorCode.SHUTTING_DOWN, "server is shutting down", headers=retry)
        status = self.role_status()
        needed = set(Role) if roles is None else set(roles)
        bad = {
            role: detail
            for role, (healthy, detail) in status.items()
            if not healthy and role in needed
        }
        if self.engines is None or bad:
            details = [ErrorDetail(loc=["roles", r.value], msg=d) for r, d in bad.items()]
            what = "failed to load" if self.load_error else "not ready"
            raise ServiceError(
                ErrorCode.NOT_READY,
                f"models {what}: " + ", ".join(r.value for r in bad),
                details=details,
                headers=retry,
            )
        return self.engines

    def error_response(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
        count: bool = True,
    ) -> JSONResponse:
        """The one error body, counted in glore_errors_total (unless `count` is False: a probe
        saying "not ready" is an answer, not a failed request)."""
        if count:
            self.metrics.errors.labels(type=code.value).inc()
        body = error_body(
            code, message, request_id_var.get(), [d.model_dump() for d in details or []]
        )
        return JSONResponse(body, status_code=STATUS[code], headers=headers)

    def from_error(self, exc: ServiceError, *, count: bool = True) -> JSONResponse:
        return self.error_response(
            exc.code, exc.message, details=exc.details, headers=exc.headers, count=count
        )


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a sync dependency in a worker thread, a needless hop per request.
    state: Any = request.app.state.glore
    assert isinstance(state, ServiceState)
    return state
