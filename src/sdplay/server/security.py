"""App-wide guards at the server's edge, as ASGI middleware (every route, present and future, WebSockets too).

- `HostGuard`: a server without an API key answers only Host values naming its own address (localhost,
  127.0.0.1, [::1], the bound name, plus `--allowed-host`), so a web page on a DNS-rebinding domain cannot
  reach it; with a key, the key protects it and any Host is answered.
- `SameSiteGuard`: state-changing requests (POST, PUT, PATCH, DELETE; body or not) and WebSocket handshakes
  from another site are refused, by `Origin` or, without one, `Sec-Fetch-Site`; origins given to
  `--cors-origin` (and the `--public-url`) are trusted. Clients that are not browsers send neither header.
- `StrictJson`: a JSON body must be strict JSON (RFC 8259): no NaN/Infinity, no number that overflows to
  infinity, no lone surrogate, no absurd nesting, so nothing non-JSON can reach a handler, a record or an answer.
- `public_base_url`: the base of absolute URLs in answers, from `--public-url` or the bound address, never from
  the request's Host header.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdplay.errors import InvalidRequest, SdplayError
from sdplay.server.errors import api_of, error_response
from sdplay.server.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_JSON_DEPTH = 64


class HostNotAllowed(SdplayError):
    """The Host header names a server this one is not (a DNS-rebinding attempt, or a missing --allowed-host)."""

    status = 421


class CrossSiteRequest(SdplayError):
    """A browser on another site tried to change state on this server."""

    status = 403


def host_name(value: str) -> str:
    """'Example.org:7860' -> 'example.org'; '[::1]:7860' -> '::1' (lower case, no trailing dot)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Host names a keyless server answers; None when any is (an API key, or `--allowed-host '*'`)."""
    extra = {host_name(h) for h in settings.allowed_hosts}
    if settings.api_key or "*" in extra:
        return None
    names = {*LOOPBACK_NAMES, host_name(settings.host), *extra}
    if settings.public_url:
        names.add(host_name(urlsplit(settings.public_url).netloc))
    return frozenset(names)


def public_base_url(settings: Settings) -> str:
    """'http://127.0.0.1:7860/' or the configured public URL (with a trailing slash)."""
    if settings.public_url:
        return settings.public_url.rstrip("/") + "/"
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/"


def _origin(url: str) -> str:
    parts = urlsplit(url.strip().lower())
    return f"{parts.scheme}://{parts.netloc}"


async def _refuse(scope: Scope, receive: Receive, send: Send, err: SdplayError) -> None:
    if scope["type"] == "websocket":  # before accept: the server answers the handshake with 403
        await send({"type": "websocket.close", "code": 1008, "reason": str(err)[:120]})
        return
    await error_response(api_of(scope.get("path", "")), err)(scope, receive, send)


class HostGuard:
    """Refuse (421) a Host header that does not name this server, unless the server has an API key."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.allowed = allowed_hosts(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.allowed is not None:
            host = Headers(scope=scope).get("host")
            if host is not None and host_name(host) not in self.allowed:
                err = HostNotAllowed(
                    f"This server does not answer for the host {host[:100]!r}.",
                    field="Host",
                    hint="Use the address it listens on (e.g. http://127.0.0.1:7860), or start it with "
                    "--allowed-host NAME (or an API key) to answer for another name.",
                )
                await _refuse(scope, receive, send, err)
                return
        await self.app(scope, receive, send)


class SameSiteGuard:
    """Refuse (403) state-changing requests and WebSocket handshakes that a browser sends from another site."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.trusted = {_origin(o) for o in settings.cors_origins}
        if settings.public_url:
            self.trusted.add(_origin(settings.public_url))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" or (kind == "http" and scope.get("method", "GET").upper() in STATE_CHANGING):
            why = self.cross_site(Headers(scope=scope))
            if why is not None:
                err = CrossSiteRequest(
                    f"Refused a {scope.get('method', 'WebSocket')} request from another site ({why}).",
                    field="Origin",
                    hint="Call the API from a program, from this server's own pages, or start the server with "
                    "--cors-origin ORIGIN to trust that site.",
                )
                await _refuse(scope, receive, send, err)
                return
        await self.app(scope, receive, send)

    def cross_site(self, headers: Headers) -> str | None:
        """Why the request comes from another site, or None if it does not (or is not from a browser)."""
        origin = headers.get("origin")
        if origin is not None:
            if origin.strip().lower() == "null":
                return "an opaque 'null' origin"
            if _origin(origin) in self.trusted:
                return None
            host = headers.get("host")
            if host is not None and urlsplit(origin.strip().lower()).netloc == host.strip().lower():
                return None
            return f"origin {origin[:100]!r}"
        site = (headers.get("sec-fetch-site") or "").strip().lower()
        if site in ("cross-site", "same-site"):
            return f"Sec-Fetch-Site: {site}"
        return None


class StrictJson:
    """Check JSON bodies before any handler sees them; refuse non-JSON values with 400 in the API's shape."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET").upper() not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        content_type = (Headers(scope=scope).get("content-type") or "").split(";")[0].strip().lower()
        if content_type and not (content_type == "application/json" or content_type.endswith("+json")):
            await self.app(scope, receive, send)
            return
        messages, body = [], b""
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        except SdplayError as err:  # the body limit, hit while reading
            await error_response(api_of(scope.get("path", "")), err)(scope, receive, send)
            return
        problem = json_problem(body) if body.strip() else None
        if problem is not None:
            err = InvalidRequest(
                f"The body is not valid JSON: {problem}.",
                field="body",
                hint="Send strict JSON (RFC 8259): numbers must be finite, strings valid Unicode.",
            )
            await error_response(api_of(scope.get("path", "")), err)(scope, receive, send)
            return
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)


def json_problem(body: bytes) -> str | None:
    """What makes `body` not strict JSON, or None when it is."""
    try:
        value = json.loads(body, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        return "it is nested too deeply"
    except UnicodeDecodeError:
        return "it is not UTF-8"
    except ValueError as exc:
        return str(exc)[:200]
    if _depth(value) > MAX_JSON_DEPTH:
        return f"it is nested more than {MAX_JSON_DEPTH} levels deep"
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "a string holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return None


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
