"""Authentication: a Bearer API key for the native and OpenAI APIs, HTTP Basic (or the key) for A1111's."""

from __future__ import annotations

import base64
import secrets

from fastapi import Request

from sdplay.server.errors import Unauthorized
from sdplay.server.settings import Settings, parse_basic_credentials


def _credentials(request: Request) -> tuple[str, bytes]:
    """(scheme, token) of the Authorization header; the token as the bytes the client sent (Starlette decodes
    header values as latin-1, which gives them back unchanged)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower(), token.strip().encode("latin-1", "replace")


def _bearer(request: Request) -> bytes | None:
    scheme, token = _credentials(request)
    return token if scheme == "bearer" and token else None


def _basic(request: Request) -> tuple[str, bytes] | None:
    """(user, password bytes) of HTTP Basic credentials, or None if they are not well formed."""
    scheme, token = _credentials(request)
    if scheme != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token, validate=True).partition(b":")
    except ValueError:  # binascii.Error: not base64
        return None
    return (user.decode("utf-8", "replace"), password) if sep else None


def same_secret(given: bytes | None, expected: str | None) -> bool:
    """Constant-time comparison of the bytes a client sent with a secret (as UTF-8): any byte is simply wrong."""
    if not given or not expected:
        return False
    return secrets.compare_digest(given, expected.encode("utf-8"))


def _key_ok(settings: Settings, token: bytes | None) -> bool:
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
