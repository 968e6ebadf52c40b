"""Server-side errors and how each API shapes them: native, OpenAI and A1111 each keep their own body."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdplay.errors import InvalidRequest, ModelNotAvailable, SdplayError

log = logging.getLogger(__name__)


class QueueFull(SdplayError):
    """The job queue is full; retry after the number of seconds in `retry_after`."""

    status = 429

    def __init__(self, message: str, *, retry_after: int = 1, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class NotFound(SdplayError):
    """A job, image or route does not exist."""

    status = 404


class Unauthorized(SdplayError):
    """Credentials are missing or wrong."""

    status = 401

    def __init__(self, message: str, *, scheme: str = "Bearer", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.scheme = scheme


class Gone(SdplayError):
    """A link that has expired."""

    status = 410


class PayloadTooLarge(SdplayError):
    """The request body is over the configured limit."""

    status = 413


class Conflict(SdplayError):
    """The request conflicts with an earlier one (e.g. an Idempotency-Key reused for another body)."""

    status = 422


# Statuses whose request must not be sent again as it is (a cancelled or timed-out job would only repeat).
NOT_TO_RETRY = (408, 409)


class InternalError(SdplayError):
    """A bug or an unexpected failure; the server log has the details."""

    status = 500


def api_of(path: str) -> str:
    """Which API a path belongs to: 'openai', 'a1111' or 'native'."""
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/sdapi/"):
        return "a1111"
    return "native"


def error_body(api: str, exc: SdplayError, status: int | None = None) -> dict[str, Any]:
    """The JSON body of an error in the shape clients of `api` expect (`status`: the answer's, if not exc's)."""
    message = str(exc)
    if api == "openai":
        kind = _openai_type(status or exc.status)
        return {"error": {"message": message, "type": kind, "param": exc.field, "code": _openai_code(exc)}}
    if api == "a1111":
        return {"error": type(exc).__name__, "detail": message, "body": "", "errors": message}
    return {"error": {"type": type(exc).__name__, "message": message, "field": exc.field, "hint": exc.hint}}


def _openai_type(status: int) -> str:
    """OpenAI's error type for an answer's status (as OpenAI: 4xx are invalid_request_error, 429 requests)."""
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def _openai_code(exc: SdplayError) -> str | None:
    if isinstance(exc, Unauthorized):
        return "invalid_api_key"
    if isinstance(exc, ModelNotAvailable):
        return "model_not_found"
    if isinstance(exc, QueueFull):
        return "rate_limit_exceeded"
    return None


def error_response(api: str, exc: SdplayError, status: int | None = None) -> JSONResponse:
    """A JSON response for `exc`, with Retry-After / WWW-Authenticate where they apply."""
    status = status or exc.status
    headers = {}
    if status in NOT_TO_RETRY:  # the `openai` client retries 408/409 unless told not to
        headers["x-should-retry"] = "false"
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Basic realm="sdplay"' if exc.scheme == "Basic" else "Bearer"
    return JSONResponse(error_body(api, exc, status), status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> InvalidRequest:
    """Turn pydantic's error list into one readable message naming the fields."""
    parts, first_field = [], None
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        name = ".".join(loc) or "body"
        first_field = first_field or name
        parts.append(f"{name}: {err.get('msg', 'invalid')}")
    message = "Invalid request: " + "; ".join(parts) + "."
    return InvalidRequest(message, field=first_field, hint="Fix the field(s) named and retry; /docs shows the schema.")


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents at this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template)), request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Every error becomes a 4xx/5xx JSON body in the shape of the API that was called; never a traceback."""

    @app.exception_handler(SdplayError)
    async def _sdplay(request: Request, exc: SdplayError) -> JSONResponse:
        return error_response(api_of(request.url.path), exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(api_of(request.url.path), _validation_error(exc))  # 400, as every invalid field

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        api = api_of(request.url.path)
        if isinstance(exc.__cause__, SdplayError):  # e.g. the body limit hit while FastAPI read the body
            return error_response(api, exc.__cause__)
        if exc.status_code == 404:
            err: SdplayError = NotFound(
                f"No such endpoint: {request.method} {request.url.path}.", hint="See /docs for the endpoints."
            )
        elif exc.status_code == 405:
            err = InvalidRequest(f"{request.method} is not allowed on {request.url.path}.", hint="See /docs.")
        else:
            err = SdplayError(str(exc.detail))
        response = error_response(api, err, exc.status_code)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        err = InternalError(
            f"Internal error ({type(exc).__name__}).", hint="The server log has the details; please report it."
        )
        return error_response(api_of(request.url.path), err)
