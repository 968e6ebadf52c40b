"""Error bodies of each API, for the OpenAPI document (the handlers in errors.py produce them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class NativeErrorBody(BaseModel):
    type: str
    message: str
    field: str | None = None
    hint: str | None = None


class NativeError(BaseModel):
    error: NativeErrorBody


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


class A1111Error(BaseModel):
    error: str
    detail: str
    body: str
    errors: str


ERROR_CODES = (400, 401, 403, 404, 408, 409, 410, 413, 421, 422, 429, 500, 507)


def error_responses(model: type[BaseModel], codes: tuple[int, ...] = ERROR_CODES) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router: every error status it may answer, with that API's error body."""
    return {code: {"model": model, "description": "Error (the message says what to do)"} for code in codes}
