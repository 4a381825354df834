"""Pure ASGI middleware: request id and access log, API keys, body limit, admission control.

Pure ASGI (not BaseHTTPMiddleware) so that client disconnects and streaming bodies reach the
app untouched.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import Refused
from service.errors import ErrorCode
from service.logs import request_id_var
from service.state import ServiceState, key_owner

logger = logging.getLogger("service.access")

# Routes that run the pipeline: admission control applies to them.
SOLVE_PATHS = frozenset({"/solve", "/v1/chat/completions"})
# Routes open without an API key (probes).
PUBLIC_PATHS = frozenset({"/health", "/ready"})
# Routes polled by machines: their access lines go to DEBUG.
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Gives every request an id (the client's X-Request-Id when sane), echoes it, logs one
    access line, observes the latency histogram, and turns any unhandled error into a 500
    with the error body (the traceback goes to the log only)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _CLIENT_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = {"code": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
                status["code"], status["started"] = message["status"], True
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error")
            if not status["started"]:
                response = self.state.error_response(
                    ErrorCode.INTERNAL_ERROR,
                    f"internal error; see the server logs for request {request_id}",
                )
                await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None)
            template = route or (
                scope["path"] if scope["path"] in self.state.route_paths else "unmatched"
            )
            self.state.metrics.request_duration.labels(
                route=template, method=scope["method"], status=str(status["code"])
            ).observe(seconds)
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            logger.log(
                level,
                "%s %s %s",
                scope["method"],
                scope["path"],
                status["code"],
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status["code"],
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            request_id_var.reset(token)


class ApiKeyMiddleware:
    """Bearer API keys on every route but the probes (and the public paths the app was given:
    the web page), compared in constant time. An accepted key's owner digest goes into the
    request's state (`api_key_owner`), so what a key leaves behind (its traces) stays its own."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state
        self.keys = [k.get_secret_value().encode() for k in state.settings.api_keys]
        self.public = PUBLIC_PATHS | state.public_paths

    def _valid(self, token: str) -> bool:
        given = token.encode()
        ok = False
        for key in self.keys:  # no early exit: the time taken says nothing about which key
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._valid(token.strip()):
            message = "missing or invalid API key: send 'Authorization: Bearer <key>'"
            response = self.state.error_response(
                ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key_owner"] = key_owner(token.strip())
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over the limit: at once from Content-Length, or as soon as a streamed
    body passes it."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state
        self.limit = state.settings.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than the limit of {self.limit} bytes"
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = self.state.error_response(ErrorCode.PAYLOAD_TOO_LARGE, message)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    # An HTTPException passes through FastAPI's body parsing untouched and
                    # reaches the app's handler, which answers with the error body.
                    raise HTTPException(413, message)
            return msg

        await self.app(scope, counting_receive, send)


class AdmissionMiddleware:
    """Reads a solve's body first (408 past `body_timeout_s`; the slot is not held meanwhile),
    then takes its slots from the admission pool, waiting in line beyond `max_in_flight`
    (429 + Retry-After only when the line is full or the wait would outlast the request's
    time limit); none while draining (503)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in SOLVE_PATHS:
            await self.app(scope, receive, send)
            return
        state, limits = self.state, self.state.settings.limits
        retry = {"Retry-After": str(limits.retry_after_s)}

        async def refuse(
            code: ErrorCode, message: str, headers: dict[str, str] | None = None
        ) -> None:
            await state.error_response(code, message, headers=headers)(scope, receive, send)

        if state.draining:
            await refuse(ErrorCode.SHUTTING_DOWN, "server is shutting down", retry)
            return
        try:
            body = await asyncio.wait_for(_read_body(receive), limits.body_timeout_s)
        except TimeoutError:
            await refuse(
                ErrorCode.REQUEST_TIMEOUT,
                f"the request body did not arrive within {limits.body_timeout_s:g} s",
            )
            return
        except HTTPException as exc:  # the body limit, raised while reading
            code = ErrorCode.PAYLOAD_TOO_LARGE if exc.status_code == 413 else ErrorCode.BAD_REQUEST
            await refuse(code, str(exc.detail))
            return
        if body is None:
            return  # the client left before sending its body: nobody to answer
        admission = state.admission
        weight = admission.weight(body)
        # The time limit counts from here: the wait in line is part of it.
        scope.setdefault("state", {})["admitted_at"] = time.monotonic()
        state.in_flight += 1  # queued or served: the drain waits for both
        state.idle.clear()
        try:
            try:
                await admission.acquire(weight, limits.request_timeout_s)
            except Refused as exc:
                await refuse(
                    ErrorCode.OVERLOADED, exc.message, {"Retry-After": str(exc.retry_after_s)}
                )
                return
            except TimeoutError:
                await refuse(
                    ErrorCode.TIMEOUT,
                    f"the request waited {limits.request_timeout_s:g} s in line; it was not run",
                )
                return
            state.metrics.in_flight.inc()
            start = time.perf_counter()
            try:
                await self.app(scope, _replay(body, receive), send)
            finally:
                state.metrics.in_flight.dec()
                admission.release(weight, (time.perf_counter() - start) / weight)
        finally:
            state.in_flight -= 1
            if state.in_flight == 0:
                state.idle.set()


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnects first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the body already read, then the client's later messages (a
    disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
