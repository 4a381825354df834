"""One settings class for the service, read from the environment (prefix GLORE_, nesting `__`).

Examples: GLORE_RUN_DIR=runs/tiny, GLORE_POLICY__BACKEND=vllm,
GLORE_POLICY__OPTIONS='{"dtype": "bfloat16"}', GLORE_LIMITS__MAX_IN_FLIGHT=16,
GLORE_DEFAULTS__ORM_THRESHOLD=0.6, GLORE_API_KEYS=key-one,key-two.

The SORM and ORM thresholds a request gets by default are, in order: the ones set here (env or
arguments), the ones a test-split `glore eval` chose on validation (RUN_DIR/serving.json), the
built-in 0.5.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engines.backends import backend_names, backend_row
from engines.base import Backend, EngineSpec, Role
from engines.reranker import ORM_RERANKER, Reranker
from service.pipeline import LocalWhenUnflagged, PipelineConfig, RefineMode, StrategyName


class RoleSettings(BaseModel):
    """Where one role's model lives and which backend serves it."""

    path: Path | None = Field(
        default=None, description="Checkpoint directory; default RUN_DIR/<role>."
    )
    backend: str = Field(
        default=Backend.HF,
        description=f"The backend serving the role: {' or '.join(backend_names())}.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Backend options (device, dtype, max_batch_size, ...), passed to the engine "
        "and validated by the backend's options model when it loads.",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        backend_row(value)  # a ValueError names the backends there are
        return value


class Limits(BaseModel):
    """What one request may ask for, and how much the server takes on at once."""

    max_in_flight: int = Field(
        default=8, ge=1, description="Solves at once (slots); beyond, requests wait in line."
    )
    max_queue: int = Field(
        default=64,
        ge=0,
        description="Requests that may wait for a slot; beyond, or when the expected wait "
        "exceeds the time limit: 429 + Retry-After.",
    )
    weigh_by_cost: bool = Field(
        default=True,
        description="A request takes samples x max tokens / one default generation slots "
        "(at least 1, at most max_in_flight); false: every request takes one.",
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="Time to send the body; then 408 (no slot is held)."
    )
    retry_after_s: int = Field(
        default=1, ge=0, description="The least Retry-After of a 429, and that of a 503."
    )
    request_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Per-solve time limit, from the body's arrival (the wait in line "
        "included); then 504. Must be below shutdown_timeout_s.",
    )
    max_body_bytes: int = Field(default=65536, ge=256, description="Larger bodies get 413.")
    max_question_chars: int = Field(default=4000, ge=1, description="Longer questions get 422.")
    max_new_tokens: int = Field(
        default=1024, ge=1, description="Upper bound on a request's max_new_tokens."
    )
    max_n: int = Field(default=16, ge=1, description="Upper bound on best_of_n's n.")


class Defaults(BaseModel):
    """What a request gets when it does not say."""

    strategy: StrategyName = Field(
        default=StrategyName.GLORE, description="The strategy of a request that names none."
    )
    refine: RefineMode = Field(
        default=RefineMode.AUTO,
        description="GLoRe's gate: `auto` refines only a draft whose ORM score is below "
        "orm_threshold; `always` refines every draft.",
    )
    orm_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Below this ORM score a draft is refined (refine=auto). Unset: the run's "
        "serving.json (chosen on validation by a test-split `glore eval`), else 0.5.",
    )
    sorm_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A step whose SORM score is below this is flagged; the local refiner's "
        "critique goes before the first. Unset: the run's serving.json, else 0.5.",
    )
    local_when_unflagged: LocalWhenUnflagged = Field(
        default=LocalWhenUnflagged.SKIP,
        description="When the SORM flags no step: `skip` refines globally only (the paper); "
        "`lowest` critiques the step the SORM trusts least.",
    )
    max_new_tokens: int = Field(
        default=256, ge=1, description="Tokens a generation may add, when a request does not say."
    )
    n: int = Field(
        default=4, ge=1, description="Samples for best_of_n and self_consistency, when unsaid."
    )
    reranker: str = Field(
        default="default",
        description="What ranks candidates: `default` (the run's dev-chosen reranker, "
        "reranker/default.json, else the ORM), `orm` (the paper's), a reranker name saved in "
        "the run, or a path to a reranker JSON.",
    )
    sample_temperature: float = Field(
        default=0.7, ge=0, description="best_of_n's and self_consistency's default temperature."
    )


class Traces(BaseModel):
    """Recent solves kept for the web page's trace links (`/ui?request_id=…`): in memory only,
    never written to disk, each readable only with the API key that made it."""

    keep: int = Field(
        default=0,
        ge=0,
        le=10000,
        description="How many of the newest /solve responses made with include_trace to keep "
        "(all keys together; the oldest goes first); 0: none, and GET /traces answers 404.",
    )


def pipeline_config(
    defaults: Defaults,
    *,
    limits: Limits | None = None,
    reranker: Reranker = ORM_RERANKER,
    strategy: StrategyName | None = None,
    refine: RefineMode | None = None,
    orm_threshold: float | None = None,
    sorm_threshold: float | None = None,
    local_when_unflagged: LocalWhenUnflagged | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    n: int | None = None,
    max_new_tokens: int | None = None,
) -> tuple[StrategyName, PipelineConfig]:
    """A request's knobs (None: not said) over the server's defaults, within its limits (None:
    none, as offline evaluation has): the one place a strategy's configuration is built, for
    /solve and the chat route (service.schemas.Knobs.pipeline_config), `glore eval` and the
    service benchmark's in-process replay alike."""
    tokens, samples = max_new_tokens or defaults.max_new_tokens, n or defaults.n
    if limits is not None:
        tokens, samples = min(tokens, limits.max_new_tokens), min(samples, limits.max_n)
    return strategy or defaults.strategy, PipelineConfig(
        refine=refine or defaults.refine,
        orm_threshold=_first(orm_threshold, defaults.orm_threshold),
        sorm_threshold=_first(sorm_threshold, defaults.sorm_threshold),
        local_when_unflagged=local_when_unflagged or defaults.local_when_unflagged,
        max_new_tokens=tokens,
        temperature=temperature,
        sample_temperature=defaults.sample_temperature,
        seed=seed,
        n=samples,
        reranker=reranker,
    )


def _first(value: float | None, default: float) -> float:
    return default if value is None else value


class Settings(BaseSettings):
    """The service's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="GLORE_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    run_dir: Path | None = Field(
        default=None, description="A run directory with one folder per role."
    )
    policy: RoleSettings = Field(default_factory=RoleSettings)
    orm: RoleSettings = Field(default_factory=RoleSettings)
    sorm: RoleSettings = Field(default_factory=RoleSettings)
    refine_global: RoleSettings = Field(default_factory=RoleSettings)
    refine_local: RoleSettings = Field(default_factory=RoleSettings)

    host: str = Field(
        default="127.0.0.1",
        description="Where to listen. Beyond loopback without API keys: a startup warning, "
        "/ready's warnings and glore_insecure=1.",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="The port to listen on.")
    model_name: str = Field(
        default="glore", description="The `model` the OpenAI-compatible API reports."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys (comma-separated or a JSON list); with any, every route but "
        "/health and /ready needs one. Empty: no auth.",
    )
    load_concurrency: int = Field(
        default=len(Role),
        ge=1,
        description="Engines that load at once at startup, where their backend allows it "
        "(vLLM, remote; transformers models load one after another); 1: all of them one "
        "after another.",
    )
    limits: Limits = Field(default_factory=Limits)
    defaults: Defaults = Field(default_factory=Defaults)
    traces: Traces = Field(default_factory=Traces)

    log_level: str = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (questions: DEBUG)."
    )
    log_json: bool = Field(
        default=True, description="One JSON object a line, with the request id; false: plain."
    )
    # After SIGTERM: keep answering (ready=503, new solves refused) at least this long, so load
    # balancers see the readiness change, and wait at most `shutdown_timeout_s` for in-flight
    # solves before closing.
    # The timeline (a test holds it, here and in deploy/): limits.request_timeout_s (60) <
    # shutdown_timeout_s (75) < the container's stop grace (compose stop_grace_period, 90 s).
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="After SIGTERM, keep answering (ready 503, new solves refused) at least "
        "this long, so load balancers see the change.",
    )
    shutdown_timeout_s: float = Field(
        default=75.0,
        ge=0,
        description="After SIGTERM, the longest wait for admitted requests (the drain).",
    )
    # Test-only: POST /debug/engines/{role}/kill makes a role's engine die (service/faults.py).
    debug_faults: bool = Field(
        default=False,
        description="Test-only fault injection routes under /debug (absent, 404, unless true); "
        "never in production.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL: {value}")
        return level

    def role(self, role: Role) -> RoleSettings:
        settings: RoleSettings = getattr(self, role.value)
        return settings

    def engine_specs(self) -> dict[Role, EngineSpec]:
        """One EngineSpec per role; a ValueError names a role with no path and no run dir."""
        specs: dict[Role, EngineSpec] = {}
        for role in Role:
            rs = self.role(role)
            path = rs.path or (self.run_dir / role.value if self.run_dir else None)
            if path is None:
                raise ValueError(
                    f"no checkpoint for role {role.value}: set GLORE_RUN_DIR "
                    f"or GLORE_{role.value.upper()}__PATH"
                )
            specs[role] = EngineSpec(path=str(path), backend=rs.backend, options=dict(rs.options))
        return specs


# ------------------------------------------------------------------ the environment

# GLORE_* names that are not settings of the service: the compose file's (image target, published
# port) and the tests' tiny-model cache. Anything else with the prefix must be a setting.
OTHER_ENV = frozenset({"GLORE_TARGET", "GLORE_HTTP_PORT", "GLORE_TINY_MODELS_DIR"})


def known_env_names() -> list[str]:
    """Every GLORE_* variable the settings read, nested models spelled out with `__`."""
    names: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            env = f"{prefix}{name.upper()}"
            names.append(env)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, env + "__")

    walk(Settings, "GLORE_")
    return names


def unknown_env(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """One message per GLORE_* variable that no setting reads, naming the closest known one (a
    misspelt GLORE_API_KEY would otherwise leave the server open without a word)."""
    known = known_env_names()
    # Dict-valued settings (a role's OPTIONS) may be set key by key.
    open_prefixes = tuple(f"{n}__" for n in known if n.endswith("__OPTIONS"))
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("GLORE_") or upper in OTHER_ENV or upper in known:
            continue
        if upper.startswith(open_prefixes):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        problems.append(f"unknown setting {name}{hint}")
    return problems


def check_env(environ: dict[str, str] | os._Environ[str] | None = None) -> None:
    """A ValueError naming every unknown GLORE_* variable and its closest known setting."""
    problems = unknown_env(os.environ if environ is None else environ)
    if problems:
        raise ValueError("; ".join(problems))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname may resolve to anything


# ------------------------------------------------------------------ defaults chosen by evaluation

SERVING_FILE = "serving.json"
THRESHOLDS = ("sorm_threshold", "orm_threshold")


class ServingDefaults(BaseModel):
    """RUN_DIR/serving.json: the thresholds a test-split `glore eval` chose on validation."""

    sorm_threshold: float = Field(
        ge=0,
        le=1,
        description="The SORM threshold with the best step-level accuracy against the exact "
        "step labels of the validation drafts (ties: nearest 0.5).",
    )
    orm_threshold: float = Field(
        ge=0,
        le=1,
        description="The ORM gate under which refining paid most on validation (ties: nearest "
        "0.5).",
    )
    report: str | None = Field(default=None, description="The report that chose them.")
    written: str | None = Field(default=None, description="When (UTC, ISO 8601).")


def read_serving_defaults(run_dir: Path) -> ServingDefaults | None:
    """The run's evaluation-chosen thresholds; None when no evaluation wrote any. A file that
    is there but unreadable is a ValueError naming it: serving on a silent fallback would hide
    it."""
    path = run_dir / SERVING_FILE
    if not path.is_file():
        return None
    try:
        return ServingDefaults.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"{path} is not a valid {SERVING_FILE}: {exc}") from None


class DefaultSource(StrEnum):
    SETTINGS = "settings"  # GLORE_DEFAULTS__*, or Settings(defaults=...)
    RUN = "run"  # RUN_DIR/serving.json, written by a test-split `glore eval`
    BUILT_IN = "built-in"


def with_run_defaults(settings: Settings) -> tuple[Settings, dict[str, DefaultSource]]:
    """`settings` with the run's evaluation-chosen thresholds as defaults where the settings
    did not set them, and which source won for each threshold."""
    explicit = settings.defaults.model_fields_set
    chosen = read_serving_defaults(settings.run_dir) if settings.run_dir is not None else None
    updates: dict[str, float] = {}
    sources: dict[str, DefaultSource] = {}
    for name in THRESHOLDS:
        if name in explicit:
            sources[name] = DefaultSource.SETTINGS
        elif chosen is not None:
            updates[name] = getattr(chosen, name)
            sources[name] = DefaultSource.RUN
        else:
            sources[name] = DefaultSource.BUILT_IN
    defaults = settings.defaults.model_copy(update=updates)
    return settings.model_copy(update={"defaults": defaults}), sources
