"""The remote backend: a role served by a model server over HTTP; glore holds no weights.

Generators speak the OpenAI completions API (`POST /v1/completions`) and read prompt
log-probabilities through vLLM's `prompt_logprobs`; LoRA adapters are models of the server
(`vllm serve --enable-lora --lora-modules name=path`). Reward models go through vLLM's pooling API
(`POST /pooling`, task `token_classify`) and are read at the step tags as engines/reward.py reads
them. Prompts travel as token ids that our own tokenizer (the checkpoint's tokenizer.json, no
torch) made, so the server sees exactly what an in-process engine would.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator

from engines.base import (
    Completion,
    ContextLengthError,
    EngineError,
    EngineHealth,
    EngineLoadError,
    FinishReason,
    InputError,
    LikelihoodRequest,
    SamplingParams,
    ScoreRequest,
    StepScores,
    TokenLogprobs,
)
from engines.options import EngineOptions, generator_only
from engines.reward import reward_token_ids, step_probs_from_rows, step_tag_id
from engines.tokens import LightTokenizer, likelihood_token_ids

log = logging.getLogger(__name__)

COMPLETIONS = "/v1/completions"
POOLING = "/pooling"
MODELS = "/v1/models"
HEALTH = "/health"


class RemoteOptions(EngineOptions):
    """The remote backend's options (GLORE_<ROLE>__OPTIONS): where the server is, how to talk."""

    base_url: str = Field(
        description="The model server's root, e.g. http://policy:8000 (no /v1: glore adds the "
        "routes)."
    )
    model: str | None = Field(
        default=None,
        description="The model name the server serves the role under (`--served-model-name`); "
        "none: the server's one base model. A role's `adapter` names its LoRA model instead.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="The NAME of an environment variable holding the server's API key, sent "
        "as a bearer token; none: no key.",
    )
    tokenizer: str | None = Field(
        default=None,
        description="A folder holding the model's tokenizer.json; none: the role's path.",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Time to connect, seconds.")
    timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="The most one call may take, retries included (the solve's own deadline "
        "cancels it sooner).",
    )
    startup_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="How long loading waits for the server to answer before it fails.",
    )
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    max_connections: int = Field(
        default=64, ge=1, description="Most open connections to the server (per event loop)."
    )
    max_keepalive_connections: int = Field(
        default=16, ge=0, description="Idle connections kept open for reuse."
    )
    keepalive_expiry_s: float = Field(
        default=2.0,
        gt=0,
        description="How long an idle connection is kept for reuse, seconds: below the "
        "server's own keep-alive timeout (vLLM's uvicorn: 5 s), or a call sent as the server "
        "closes the connection is lost.",
    )
    retries: int = Field(
        default=3,
        ge=0,
        description="Retries of a call the server refused the connection to or answered 503 "
        "(safe: no work was done), with exponential backoff.",
    )
    retry_backoff_s: float = Field(
        default=0.25, gt=0, description="The first retry's wait; each next one doubles it."
    )
    health_interval_s: float = Field(
        default=1.0, gt=0, description="How often the server's health is polled, seconds."
    )
    prompt_logprobs: bool = generator_only(
        True,
        description="Read prompt log-probabilities (the reranker's and question profile's) "
        "through vLLM's `prompt_logprobs`; loading refuses a server without it. False: any "
        "OpenAI-compatible completions server will do, and log-probability reads fail.",
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"expected an http(s) URL with a host, got {value!r}")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "").isalnum():
            raise ValueError(f"expected an environment variable's name, got {value!r}")
        return value


Outcome = Literal[
    "ok",
    "cancelled",
    "refused",
    "unavailable",
    "timeout",
    "disconnected",
    "bad_request",
    "server_error",
]


@dataclass(frozen=True)
class UpstreamCall:
    """One call to a model server as an observer sees it (the service turns these into its
    glore_upstream_* metrics): the route, its outcome, seconds in all, retries made."""

    route: str
    outcome: Outcome
    seconds: float
    retries: int


# Called with the role a view serves and each call it made.
UpstreamObserver = Callable[[str, UpstreamCall], None]


class _Retryable(Exception):
    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class _Server:
    """One model server: its HTTP clients (one pool per event loop), its health, its models."""

    def __init__(self, options: RemoteOptions, name: str) -> None:
        self.options = options
        self.base_url = options.base_url
        self.name = name
        self.headers: dict[str, str] = {}
        if options.api_key_env:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise EngineLoadError(
                    f"api_key_env names {options.api_key_env}, which is not set or empty",
                    path=self.base_url,
                )
            self.headers["Authorization"] = f"Bearer {key}"
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._lock = threading.Lock()
        self._healthy = True
        self._detail = "serving"
        self.closed = False
        self._stop = threading.Event()
        self._health_path = MODELS
        self._poller: threading.Thread | None = None

    # ---- clients

    def _timeout(self) -> httpx.Timeout:
        o = self.options
        return httpx.Timeout(o.timeout_s, connect=o.connect_timeout_s)

    def client(self) -> httpx.AsyncClient:
        """The pooled client of the running loop (a client's connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                for old in [lp for lp in self._clients if lp.is_closed()]:
                    del self._clients[old]  # a finished asyncio.run's; its sockets are gone
                o = self.options
                client = httpx.AsyncClient(
                    base_url=self.base_url,
                    headers=self.headers,
                    timeout=self._timeout(),
                    verify=o.verify_tls,
                    limits=httpx.Limits(
                        max_connections=o.max_connections,
                        max_keepalive_connections=o.max_keepalive_connections,
                        keepalive_expiry=o.keepalive_expiry_s,
                    ),
                )
                self._clients[loop] = client
            return client

    def sync_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            timeout=httpx.Timeout(10.0, connect=self.options.connect_timeout_s),
            verify=self.options.verify_tls,
        )

    # ---- health

    def mark(self, healthy: bool, detail: str) -> None:
        with self._lock:
            if healthy != self._healthy:
                log.log(
                    logging.INFO if healthy else logging.WARNING,
                    "%s at %s is %s: %s",
                    self.name,
                    self.base_url,
                    "back" if healthy else "unhealthy",
                    detail,
                )
            self._healthy, self._detail = healthy, detail

    def health(self) -> EngineHealth:
        if self.closed:
            return EngineHealth(False, "closed")
        with self._lock:
            return EngineHealth(self._healthy, f"{self.base_url}: {self._detail}")

    def start_polling(self, health_path: str) -> None:
        self._health_path = health_path
        self._poller = threading.Thread(target=self._poll, name=f"glore-{self.name}", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        with self.sync_client() as client:
            while not self._stop.wait(self.options.health_interval_s):
                self.mark(*self._probe(client))

    def _probe(self, client: httpx.Client) -> tuple[bool, str]:
        try:
            r = client.get(self._health_path, timeout=min(5.0, self.options.health_interval_s * 5))
        except httpx.HTTPError as exc:
            return self._verdict(exc)
        return self._verdict(r)

    def _verdict(self, answer: httpx.Response | httpx.HTTPError) -> tuple[bool, str]:
        """Healthy or not, and why, from the answer to GET of the health route."""
        if isinstance(answer, httpx.ConnectError):
            return False, "unreachable (connection refused)"
        if isinstance(answer, httpx.TimeoutException):
            return False, f"no answer to GET {self._health_path}"
        if isinstance(answer, httpx.HTTPError):
            return False, f"unreachable ({type(answer).__name__})"
        if answer.status_code != 200:
            return False, f"unhealthy (GET {self._health_path}: {answer.status_code})"
        return True, "serving"

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        with self._lock:
            clients, self._clients = self._clients, {}
        loop = asyncio.get_running_loop()
        for client_loop, client in clients.items():
            if client_loop is loop:
                await client.aclose()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 10)

    # ---- calls

    async def post(
        self, route: str, body: dict[str, Any], *, role: str, observer: UpstreamObserver | None
    ) -> Any:
        """POST `body`, retrying what is safe (a refused connection, a 503) with backoff
        within the call's time limit; the JSON answer, or EngineError/InputError.

        Cancelling the awaiting task closes the connection, which makes vLLM abort the request.
        """
        o = self.options
        start = time.monotonic()
        deadline = start + o.timeout_s
        retries = 0
        outcome: Outcome = "ok"
        try:
            while True:
                try:
                    return await self._post_once(route, body, deadline)
                except _Retryable as exc:
                    outcome = exc.outcome
                    wait = o.retry_backoff_s * 2**retries * (0.5 + random.random() / 2)
                    if retries >= o.retries or time.monotonic() + wait >= deadline:
                        self.mark(False, str(exc))
                        raise EngineError(
                            f"{self.name}: {exc} (after {retries} retries)", role=role
                        ) from None
                    retries += 1
                    log.info("%s: %s; retry %d in %.2f s", self.name, exc, retries, wait)
                    await asyncio.sleep(wait)
        except EngineError as exc:
            outcome = getattr(exc, "outcome", outcome)
            raise
        except InputError:
            outcome = "bad_request"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"  # the caller gave up (time limit, client gone): no error
            raise
        finally:
            if observer is not None:
                observer(role, UpstreamCall(route, outcome, time.monotonic() - start, retries))

    async def _post_once(self, route: str, body: dict[str, Any], deadline: float) -> Any:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Outcome("timeout", f"{self.name}: {route} did not answer in time")
        timeout = httpx.Timeout(left, connect=min(left, self.options.connect_timeout_s))
        try:
            r = await self.client().post(route, json=body, timeout=timeout)
        except httpx.ConnectError as exc:
            raise _Retryable("refused", f"cannot connect to {self.base_url} ({exc})") from None
        except httpx.TimeoutException:
            raise _Outcome(
                "timeout",
                f"{self.name}: {route} did not answer within {self.options.timeout_s:g} s",
            ) from None
        except httpx.HTTPError as exc:
            # The server went away mid-call (reset, closed): the call may have done work, so
            # it is not retried, and the server is marked down until the health poll sees it.
            self.mark(False, f"lost the connection ({type(exc).__name__})")
            raise _Outcome(
                "disconnected", f"{self.name}: lost the connection to {self.base_url} ({exc!r})"
            ) from None
        if r.status_code == 200:
            self.mark(True, "serving")
            try:
                return r.json()
            except ValueError:
                raise _Outcome("server_error", f"{self.name}: {route} answered non-JSON") from None
        message = _error_message(r)
        if r.status_code == 503:
            raise _Retryable("unavailable", f"{route} answered 503: {message}")
        if r.status_code in (400, 422):
            if "context length" in message or "max_model_len" in message:
                raise ContextLengthError(f"prompts: the model server refused it: {message}")
            raise InputError(f"the model server refused the request: {message}")
        # A server that is going down answers its in-flight calls with a 500 (vLLM's engine
        # stopping: "EngineCore encountered an issue"): one look at its health tells that from a
        # failure of this call alone. Down, it is marked so at once, and the call counts as
        # the server's unavailability (the service's 503 naming the role), not as its error.
        healthy, detail = await self._probe_now(deadline)
        if not healthy:
            self.mark(False, detail)
            raise _Outcome(
                "unavailable",
                f"{self.name}: {route} answered {r.status_code} and the server is {detail}",
            )
        raise _Outcome("server_error", f"{self.name}: {route} answered {r.status_code}: {message}")

    async def _probe_now(self, deadline: float) -> tuple[bool, str]:
        """The server's health now (its health route, as the poller reads it), within 2 s and
        the call's deadline."""
        left = min(2.0, deadline - time.monotonic())
        if left <= 0:
            return True, "not checked (no time left)"
        try:
            r = await self.client().get(self._health_path, timeout=left)
        except httpx.HTTPError as exc:
            return self._verdict(exc)
        return self._verdict(r)


class _Outcome(EngineError):
    """An EngineError that says which outcome it counts as."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def _error_message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(body)[:300]


def _models(server: _Server, client: httpx.Client) -> dict[str, dict[str, Any]]:
    """The server's models by name, waiting up to startup_timeout_s for it to answer."""
    deadline = time.monotonic() + server.options.startup_timeout_s
    while True:
        try:
            r = client.get(MODELS)
            break
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline:
                raise EngineLoadError(
                    f"model server at {server.base_url} did not answer within "
                    f"{server.options.startup_timeout_s:g} s ({exc!r})",
                    path=server.base_url,
                ) from None
            time.sleep(0.5)
    if r.status_code == 404:
        raise EngineLoadError(
            f"model server at {server.base_url} has no {MODELS} route", path=server.base_url
        )
    if r.status_code != 200:
        raise EngineLoadError(
            f"model server at {server.base_url}: GET {MODELS} answered {r.status_code}: "
            f"{_error_message(r)}",
            path=server.base_url,
        )
    data = r.json().get("data", [])
    return {str(m["id"]): m for m in data if isinstance(m, dict) and "id" in m}


def _refuse_route(server: _Server, route: str, r: httpx.Response, why: str) -> EngineLoadError:
    if r.status_code in (404, 405):
        return EngineLoadError(
            f"model server at {server.base_url} has no {route} route; {why}", path=server.base_url
        )
    return EngineLoadError(
        f"model server at {server.base_url}: {route} answered {r.status_code} "
        f"({_error_message(r)}); {why}",
        path=server.base_url,
    )


class _RemoteEngine:
    """Startup (tokenizer, the server's models and routes), health and close, for both kinds."""

    def __init__(
        self, path: str | Path, options: RemoteOptions | None, *, kind: str, name: str | None
    ) -> None:
        if options is None:
            raise EngineLoadError("the remote backend needs a base_url option", path=str(path))
        self.path = str(path)
        self.options = options
        self.name = name or f"remote:{kind}:{options.base_url}"
        # The role this view's calls are counted under (registry.EngineSet labels each role).
        self.role = self.name.split(":", 1)[0]
        self.observer: UpstreamObserver | None = None
        folder = options.tokenizer or self.path
        try:
            self.tokenizer = LightTokenizer(folder)
        except (OSError, ValueError) as exc:
            raise EngineLoadError(
                f"cannot read the tokenizer ({exc}); set the `tokenizer` option to a folder "
                "holding the model's tokenizer.json",
                path=folder,
            ) from None
        self.server = _Server(options, self.name)
        with self.server.sync_client() as client:
            models = _models(self.server, client)
            self._served = set(models)
            self.model = self._pick_model(models)
            info = models[self.model]
            limit = info.get("max_model_len")
            self.max_model_len: int | None = int(limit) if isinstance(limit, int) else None
            self._check_routes(client)
            health = client.get(HEALTH)
        # vLLM's /health turns 503 when its engine is dead; other servers answer /v1/models.
        self.server.start_polling(HEALTH if health.status_code == 200 else MODELS)

    def _pick_model(self, models: dict[str, dict[str, Any]]) -> str:
        base = [name for name, m in models.items() if not m.get("parent")]
        if self.options.model is not None:
            if self.options.model not in models:
                raise EngineLoadError(
                    f"model server at {self.options.base_url} does not serve model "
                    f"{self.options.model!r}; it serves {sorted(models)}",
                    path=self.options.base_url,
                )
            return self.options.model
        if len(base) != 1:
            raise EngineLoadError(
                f"model server at {self.options.base_url} serves {sorted(base)}; set the "
                "`model` option to one",
                path=self.options.base_url,
            )
        return base[0]

    def _check_routes(self, client: httpx.Client) -> None:
        raise NotImplementedError

    def _check_length(self, n_tokens: int, field: str) -> None:
        if self.max_model_len is not None and n_tokens >= self.max_model_len:
            raise ContextLengthError(
                f"{field}: input has {n_tokens} tokens, max_model_len is {self.max_model_len}"
            )

    def for_role(self, role: str) -> Any:
        """A view of this engine whose calls are counted under `role` (same server, state)."""
        view = copy.copy(self)
        view.role = role
        view.observer = None
        return view

    def observe(self, observer: UpstreamObserver | None) -> None:
        """Report each call this view makes to `observer` (the service's upstream metrics)."""
        self.observer = observer

    async def _post(self, route: str, body: dict[str, Any]) -> Any:
        return await self.server.post(route, body, role=self.role, observer=self.observer)

    def health(self) -> EngineHealth:
        return self.server.health()

    async def close(self) -> None:
        await self.server.close()


class RemoteGenerator(_RemoteEngine):
    """A causal LM behind an OpenAI-compatible completions server (vLLM's, for log-probs)."""

    def __init__(
        self, path: str | Path, options: RemoteOptions | None = None, *, name: str | None = None
    ) -> None:
        super().__init__(path, options, kind="generator", name=name)
        # The model name a call goes to: the role's LoRA adapter, or the base model.
        self.adapter = self.options.adapter
        self.target = self._target(self.options.adapter)

    def _target(self, adapter: str | None) -> str:
        if adapter is None:
            return self.model
        if adapter not in self._served:
            raise ValueError(
                f"adapter: model server at {self.options.base_url} does not serve LoRA adapter "
                f"{adapter!r} (start it with --enable-lora --lora-modules {adapter}=PATH); it "
                f"serves {sorted(self._served)}"
            )
        return adapter

    def _check_routes(self, client: httpx.Client) -> None:
        for adapter in sorted(self.options.lora_adapters or {}):
            try:
                self._target(adapter)  # each loaded adapter must be a model of the server
            except ValueError as exc:
                raise EngineLoadError(str(exc), path=self.options.base_url) from None
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": self.tokenizer.encode("1", add_special_tokens=False) or [0],
            "max_tokens": 1,
            "temperature": 0.0,
        }
        why = "a generator role needs an OpenAI-compatible completions server"
        if self.options.prompt_logprobs:
            body["prompt_logprobs"] = 0
            why = (
                "the policy's log-probability reads need vLLM's prompt_logprobs (set the option "
                "prompt_logprobs=false to serve a role that never reads them)"
            )
        r = client.post(COMPLETIONS, json=body)
        if r.status_code != 200:
            raise _refuse_route(self.server, COMPLETIONS, r, why)
        if self.options.prompt_logprobs:
            choices = r.json().get("choices") or [{}]
            if choices[0].get("prompt_logprobs") is None:
                raise EngineLoadError(
                    f"model server at {self.options.base_url} returns no prompt_logprobs from "
                    f"{COMPLETIONS}; {why}",
                    path=self.options.base_url,
                )

    def with_adapter(self, adapter: str | None) -> RemoteGenerator:
        """A view that decodes through another of the server's LoRA adapters (None: the base);
        views share the server's connections and health."""
        view = copy.copy(self)
        view.adapter = adapter
        view.target = self._target(adapter)
        if adapter is not None:
            view.name = f"{self.name}+{adapter}"
        return view

    async def generate(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[list[Completion]]:
        """n completions per prompt, in prompt order, in one request. Cancelling the awaiting
        task closes the connection and the server aborts the request."""
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a sequence of strings, got one string")
        encoded = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        for ids in encoded:
            if not ids:
                raise InputError("prompts: a prompt is empty")
            self._check_length(len(ids), "prompts")
        if not encoded:
            return []
        # One request per prompt, as the in-process engines schedule them: each prompt's
        # max_tokens is clamped to its own room in the context.
        return list(await asyncio.gather(*(self._one(ids, params) for ids in encoded)))

    async def _one(self, ids: list[int], params: SamplingParams) -> list[Completion]:
        # Greedy n > 1 is one sample repeated (as the in-process engines do).
        greedy_copies = params.n if params.greedy else 1
        n = params.n // greedy_copies
        max_tokens = params.max_new_tokens
        if self.max_model_len is not None:
            max_tokens = min(max_tokens, self.max_model_len - len(ids))
        body: dict[str, Any] = {
            "model": self.target,
            "prompt": ids,
            "n": n,
            "temperature": 0.0 if params.greedy else params.temperature,
            "top_p": params.top_p,
            "max_tokens": max_tokens,
            # The sampled tokens' own log-probabilities: how many tokens each choice holds.
            "logprobs": 0,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        answer = await self._post(COMPLETIONS, body)
        choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise EngineError(
                f"{self.name}: the server returned {len(choices)} of {n} samples", role=self.role
            )
        return [self._completion(c, answer) for c in choices] * greedy_copies

    def _completion(self, choice: dict[str, Any], answer: dict[str, Any]) -> Completion:
        reason = choice.get("finish_reason")
        if reason not in ("stop", "length"):
            raise EngineError(
                f"{self.name}: the server finished a choice with {reason!r}", role=self.role
            )
        finish: FinishReason = "stop" if reason == "stop" else "length"
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
        if isinstance(tokens, list):
            count = len(tokens)
        elif isinstance(choice.get("token_ids"), list):
            count = len(choice["token_ids"])
        else:  # a server without per-choice logprobs: the usage's share
            usage = answer.get("usage") or {}
            count = int(usage.get("completion_tokens", 0)) // max(1, len(answer["choices"]))
        return Completion(str(choice.get("text", "")), count, finish)

    async def logprobs(self, requests: Sequence[LikelihoodRequest]) -> list[TokenLogprobs]:
        """Each completion's token log-probabilities given its prompt: vLLM's prompt_logprobs
        of the whole sequence (the actual token's own), one token sampled and dropped."""
        if not self.options.prompt_logprobs:
            raise EngineError(
                f"{self.name}: log-probability reads are off for this role "
                "(option prompt_logprobs=false)",
                role=self.role,
            )
        items = [likelihood_token_ids(self.tokenizer, r) for r in requests]
        for ids, _ in items:
            self._check_length(len(ids), "completion")
        if not items:
            return []
        body = {
            "model": self.target,
            "prompt": [ids for ids, _ in items],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }
        answer = await self._post(COMPLETIONS, body)
        choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(items):
            raise EngineError(
                f"{self.name}: the server returned {len(choices)} of {len(items)} readings",
                role=self.role,
            )
        out = []
        for (ids, n_prompt), choice in zip(items, choices, strict=True):
            read = choice.get("prompt_logprobs")
            if not isinstance(read, list) or len(read) != len(ids):
                raise EngineError(f"{self.name}: the server returned no prompt_logprobs")
            # Position t holds log p(ids[t] | ids[:t]), keyed by the token id as text.
            try:
                values = tuple(
                    float(read[t][str(ids[t])]["logprob"]) for t in range(n_prompt, len(ids))
                )
            except (KeyError, TypeError) as exc:
                raise EngineError(
                    f"{self.name}: unreadable prompt_logprobs ({exc!r})", role=self.role
                ) from None
            out.append(TokenLogprobs(values))
        return out


class RemoteScorer(_RemoteEngine):
    """A token-classification reward model behind vLLM's pooling API (`--runner pooling`)."""

    def __init__(
        self, path: str | Path, options: RemoteOptions | None = None, *, name: str | None = None
    ) -> None:
        self._tag_id: int | None = None
        super().__init__(path, options, kind="scorer", name=name)

    @property
    def tag_id(self) -> int:
        if self._tag_id is None:
            self._tag_id = step_tag_id(self.tokenizer, self.path)
        return self._tag_id

    def _check_routes(self, client: httpx.Client) -> None:
        ids = [self.tag_id]
        r = client.post(POOLING, json=self._body([ids]))
        why = (
            "a reward model needs vLLM's pooling API (`vllm serve MODEL --runner pooling` on a "
            "token-classification checkpoint)"
        )
        if r.status_code != 200:
            raise _refuse_route(self.server, POOLING, r, why)
        rows = self._rows(r.json(), 1)[0]
        if len(rows) != 1 or len(rows[0]) != 2:
            raise EngineLoadError(
                f"model server at {self.options.base_url}: {POOLING} answered a "
                f"{len(rows)}x{len(rows[0]) if rows else 0} reading of 1 token; a reward model "
                "needs 2 labels per token (task token_classify)",
                path=self.options.base_url,
            )

    def _body(self, encoded: list[list[int]]) -> dict[str, Any]:
        # Raw logits, so the softmax is engines/reward.py's, as on the other backends.
        return {
            "model": self.model,
            "input": encoded,
            "task": "token_classify",
            "use_activation": False,
        }

    def _rows(self, answer: Any, expected: int) -> list[list[list[float]]]:
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            raise EngineError(
                f"{self.name}: {POOLING} returned {0 if not isinstance(data, list) else len(data)} "
                f"of {expected} readings",
                role=self.role,
            )
        return [d["data"] for d in sorted(data, key=lambda d: d.get("index", 0))]

    async def score(self, requests: Sequence[ScoreRequest]) -> list[StepScores]:
        """One StepScores per request, in order, from one pooling request."""
        encoded = [reward_token_ids(self.tokenizer, self.tag_id, r) for r in requests]
        for ids in encoded:
            self._check_length(len(ids) - 1, "steps")
        if not encoded:
            return []
        answer = await self._post(POOLING, self._body(encoded))
        out = []
        for ids, rows in zip(encoded, self._rows(answer, len(encoded)), strict=True):
            if len(rows) != len(ids) or any(len(row) != 2 for row in rows):
                raise EngineError(
                    f"{self.name}: expected [{len(ids)}, 2] token logits from {POOLING}",
                    role=self.role,
                )
            out.append(step_probs_from_rows(rows, ids, self.tag_id))
        return out
