"""Every Prometheus metric of the service, in one place, on one registry per app.

Names follow the Prometheus guide: a `glore_` prefix, base units, `_seconds` / `_total`, and small
fixed label sets (never a request id or a question).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from engines.base import ByRole, Role
from engines.remote import UpstreamCall
from service.pipeline import Solution
from service.pipeline.types import CandidateKind, Stage, StrategyName
from service.profile import WarningCode

# Requests take from milliseconds (cheap routes) to minutes (a long refinement on a big model).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


# The candidates each strategy makes beyond its draft, and where one may be dropped: their
# zero series exist from the start, like the warnings'.
_CANDIDATES = {
    StrategyName.GLORE: (CandidateKind.GLOBAL, CandidateKind.LOCAL),
    StrategyName.GLOBAL_ONLY: (CandidateKind.GLOBAL,),
    StrategyName.LOCAL_ONLY: (CandidateKind.LOCAL,),
    StrategyName.BEST_OF_N: (CandidateKind.SAMPLE,),
    StrategyName.SELF_CONSISTENCY: (CandidateKind.SAMPLE,),
}
_STAGES = (Stage.REFINE, Stage.SCORE, Stage.RERANK)


class Metrics:
    """The service's metrics, registered on their own registry (so two apps in one test process
    do not collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The `_created` series double every counter's output and no dashboard reads them.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "glore_request_duration_seconds",
            "Time from a request's arrival to its response, by route, method and status code.",
            ["route", "method", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "glore_stage_duration_seconds",
            "Time spent in each pipeline stage (draft, sample, score, decide, refine, rerank).",
            ["strategy", "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.solves = Counter(
            "glore_solves_total",
            "Solves completed, by strategy.",
            ["strategy"],
            registry=r,
        )
        self.refine_decisions = Counter(
            "glore_refine_decisions_total",
            "Decisions on drafts: keep or refine, and why.",
            ["strategy", "decision", "reason"],
            registry=r,
        )
        self.winners = Counter(
            "glore_winner_total",
            "The candidate the ORM chose, by kind (draft, global, local, sample).",
            ["strategy", "kind"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "glore_generated_tokens_total",
            "Tokens generated, by the role that generated them.",
            ["role"],
            registry=r,
        )
        self.dropped = Counter(
            "glore_dropped_candidates_total",
            "Candidates given up on because an input did not fit a model's context, by kind "
            "(global, local, sample) and stage (refine, score, rerank).",
            ["strategy", "kind", "stage"],
            registry=r,
        )
        self.warnings = Counter(
            "glore_warnings_total",
            "Warnings that a question is beyond the models, by code.",
            ["code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "glore_in_flight_requests",
            "Solve requests admitted and not yet answered.",
            registry=r,
        )
        self.queue_length = Gauge(
            "glore_queue_length",
            "Solve requests waiting for an admission slot.",
            registry=r,
        )
        self.queue_wait = Histogram(
            "glore_queue_wait_seconds",
            "Time a solve request waited in line for its slots (queued requests only).",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.insecure = Gauge(
            "glore_insecure",
            "1 when the server listens beyond loopback without API keys, else 0.",
            registry=r,
        )
        self.errors = Counter(
            "glore_errors_total",
            "Error responses, by error type (the `code` of the error body).",
            ["type"],
            registry=r,
        )
        self.engine_ready = Gauge(
            "glore_engine_ready",
            "1 when the role's model is loaded and healthy, else 0.",
            ["role"],
            registry=r,
        )
        for role in Role:
            self.engine_ready.labels(role=role.value).set(0)
        self.engine_load = Gauge(
            "glore_engine_load_seconds",
            "Seconds each loaded engine took to load, by the roles it serves (e.g. "
            "policy+refine_global+refine_local when the refiners are adapters of the policy); "
            "engines loading together overlap, so these add up to more than the models' load.",
            ["engine"],
            registry=r,
        )
        self.models_load = Gauge(
            "glore_models_load_seconds",
            "Seconds from the start of model loading to every role being served (0 until then): "
            "the part of a cold start that the models take.",
            registry=r,
        )
        # Calls to model servers (roles on the remote backend): engines/remote.py reports each.
        self.upstream_duration = Histogram(
            "glore_upstream_request_duration_seconds",
            "Time of each call to a role's model server, retries included, by role, route "
            "(/v1/completions, /pooling) and outcome (ok, cancelled, refused, unavailable, "
            "timeout, disconnected, bad_request, server_error).",
            ["role", "route", "outcome"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "glore_upstream_errors_total",
            "Calls to a role's model server that failed, by role and outcome.",
            ["role", "outcome"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "glore_upstream_retries_total",
            "Retries of calls to a role's model server (after a refused connection or a 503).",
            ["role"],
            registry=r,
        )
        # Zero series from the start, so a rate() or an alert sees every code before it fires.
        for code in WarningCode:
            self.warnings.labels(code=code.value)
        for strategy, kinds in _CANDIDATES.items():
            for kind in kinds:
                stages = (Stage.SCORE, Stage.RERANK) if kind is CandidateKind.SAMPLE else _STAGES
                for stage in stages:
                    self.dropped.labels(strategy=strategy.value, kind=kind.value, stage=stage.value)

    def observe_solution(self, solution: Solution) -> None:
        strategy = solution.strategy.value
        for stage, seconds in solution.timings.items():
            self.stage_duration.labels(strategy=strategy, stage=stage.value).observe(seconds)
        self.solves.labels(strategy=strategy).inc()
        self.refine_decisions.labels(
            strategy=strategy,
            decision=solution.plan.action.value,
            reason=solution.plan.reason.value,
        ).inc()
        self.winners.labels(strategy=strategy, kind=solution.winner.candidate.kind.value).inc()
        for role, tokens in solution.tokens.items():
            self.generated_tokens.labels(role=role.value).inc(tokens)
        for d in solution.dropped:
            self.dropped.labels(strategy=strategy, kind=d.kind.value, stage=d.stage.value).inc()

    def observe_upstream(self, role: str, call: UpstreamCall) -> None:
        """One call a remote engine made for `role` (engines.remote reports them)."""
        self.upstream_duration.labels(role=role, route=call.route, outcome=call.outcome).observe(
            call.seconds
        )
        if call.outcome not in ("ok", "cancelled"):
            self.upstream_errors.labels(role=role, outcome=call.outcome).inc()
        if call.retries:
            self.upstream_retries.labels(role=role).inc(call.retries)

    def watch_upstream(self, engines: ByRole, roles: Iterable[Role]) -> None:
        """Count the calls of every role served by a remote engine, with zero series for them."""
        for role in roles:
            engine = engines.scorer(role) if role.is_scorer else engines.generator(role)
            observe = getattr(engine, "observe", None)
            if observe is None:
                continue
            observe(self.observe_upstream)
            self.upstream_retries.labels(role=role.value)
            self.upstream_errors.labels(role=role.value, outcome="refused")
            self.upstream_errors.labels(role=role.value, outcome="unavailable")

    def observe_warnings(self, codes: Iterable[str]) -> None:
        for code in codes:
            self.warnings.labels(code=code).inc()
