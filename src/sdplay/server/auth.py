"""Authentication: a Bearer API key for the native and OpenAI APIs, HTTP Basic (or the key) for A1111's."""

from __future__ import annotations

import base64
import secrets

from fastapi import Request

from sdplay.server.errors import Unauthorized
from sdplay.server.settings import Settings, parse_basic_credentials


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except ValueError:  # binascii.Error, non-ASCII base64, or not UTF-8
        return None
    return (user, password) if sep else None


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of two secrets of any characters (compared as UTF-8 bytes, so a non-ASCII
    header value is simply wrong, never an error)."""
    if not given or not expected:
        return False
    return secrets.compare_digest(_utf8(given), _utf8(expected))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _key_ok(settings: Settings, token: str | None) -> bool:
    return same_secret(token, settings.api_key)


async def require_api_key(request: Request) -> None:
    """Bearer auth when the server has an API key; open otherwise (it then listens on loopback only)."""
    settings: Settings = request.app.state.settings
    if settings.api_key and not _key_ok(settings, _bearer(request)):
        raise Unauthorized(
            "Missing or wrong API key.", hint="Send the header 'Authorization: Bearer <key>' with the server's key."
        )


async def require_a1111_auth(request: Request) -> None:
    """HTTP Basic with --api-auth credentials; the API key (Bearer) is accepted too."""
    settings: Settings = request.app.state.settings
    if _key_ok(settings, _bearer(request)):
        return
    if settings.api_auth:
        creds = parse_basic_credentials(settings.api_auth)
        given = _basic(request)
        if given and given[0] in creds and same_secret(given[1], creds[given[0]]):
            return
        raise Unauthorized(
            "Incorrect username or password.", scheme="Basic", hint="Use the user:password given to --api-auth."
        )
    if settings.api_key:
        given = _basic(request)
        if given and _key_ok(settings, given[1]):
            return
        raise Unauthorized("Missing or wrong API key.", hint="Send 'Authorization: Bearer <key>'.")
