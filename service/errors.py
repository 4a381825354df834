"""Domain errors, the one table from error to HTTP status, and the one error body."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    VALIDATION_ERROR = "validation_error"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    TIMEOUT = "timeout"
    ENGINE_ERROR = "engine_error"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    CLIENT_DISCONNECTED = "client_disconnected"
    INTERNAL_ERROR = "internal_error"


# The one table from error to status (TGI's, plus auth and shutdown).
STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    # The body did not arrive within limits.body_timeout_s (a client that sends headers, then
    # stalls, never holds an admission slot).
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    # A model failed one call and still reports healthy: the server's fault, not the client's
    # (a 5xx, so the error-ratio alert sees it), and not a gateway's (no 502).
    ErrorCode.ENGINE_ERROR: 500,
    # A model died under the request: this replica cannot serve until restarted (/ready is 503).
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.NOT_READY: 503,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.TIMEOUT: 504,
    # nginx's convention: the client went away; nobody reads this answer, it is for logs/metrics
    ErrorCode.CLIENT_DISCONNECTED: 499,
}


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is, e.g. ['body', 'question'].")
    msg: str


class ErrorInfo(BaseModel):
    code: ErrorCode = Field(description="Machine-readable error type.")
    message: str = Field(description="What went wrong, for a person.")
    request_id: str = Field(description="Also in the X-Request-Id header and in the server logs.")
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every failure answers with this body (and never with a stack trace)."""

    error: ErrorInfo

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "error": {
                        "code": "overloaded",
                        "message": "too many requests in flight (8); retry after 1 s",
                        "request_id": "3f2a9c0e5b7d4e21a1c8f00d9e6b7a54",
                        "details": [],
                    }
                }
            ]
        }
    }


class ServiceError(Exception):
    """An error with a code from the table; its message is safe to show to the client."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return STATUS[self.code]


def field_error(loc: list[str | int], msg: str) -> ServiceError:
    """A 422 naming the offending field."""
    where = ".".join(str(p) for p in loc if p != "body")
    return ServiceError(
        ErrorCode.VALIDATION_ERROR,
        f"{where}: {msg}",
        details=[ErrorDetail(loc=loc, msg=msg)],
    )


def error_body(code: ErrorCode, message: str, request_id: str, details: Any = None) -> dict:
    return ErrorBody(
        error=ErrorInfo(code=code, message=message, request_id=request_id, details=details or [])
    ).model_dump(mode="json")


def responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route that may fail with these codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status = STATUS[code]
        entry = out.setdefault(status, {"model": ErrorBody, "description": ""})
        entry["description"] = " / ".join(filter(None, [entry["description"], code.value]))
    return out
