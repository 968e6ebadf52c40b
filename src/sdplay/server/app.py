"""The app factory: settings + engines (one per device) -> a FastAPI app with the native, OpenAI, A1111 and gallery
APIs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdplay import __version__
from sdplay.protocol import EngineProtocol
from sdplay.server import (
    routes_a1111,
    routes_comfy,
    routes_gallery,
    routes_jobs,
    routes_openai,
    routes_system,
    routes_telemetry,
)
from sdplay.server.comfy.runtime import ComfyState
from sdplay.server.errors import PayloadTooLarge, api_of, error_response, install_error_handlers
from sdplay.server.openapi_limits import state_limits
from sdplay.server.routes_a1111 import A1111State
from sdplay.server.security import HostGuard, SameSiteGuard, StrictJson
from sdplay.server.service import Service
from sdplay.server.settings import Settings

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app(
    settings: Settings | None = None, engine: EngineProtocol | Sequence[EngineProtocol] | None = None
) -> FastAPI:
    """Build the app; the service (queue, workers, gallery) starts and stops with the app's lifespan.

    `engine`: one engine, or one per device (each gets its own worker); default: a real engine per
    `settings.devices` entry.
    """
    settings = (settings or Settings.from_env()).check()
    service = Service(settings, engine if engine is not None else default_engines(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            app.state.comfy.close()
            routes_telemetry.stop(app)
            await run_in_threadpool(service.stop)

    app = FastAPI(
        title="sdplay",
        version=__version__,
        description="Text-to-image server: native job API, OpenAI images API, AUTOMATIC1111 API, ComfyUI API. "
        "See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.a1111 = A1111State()
    app.state.comfy = ComfyState()
    install_error_handlers(app)
    state_limits(app, settings)
    for module in (routes_system, routes_jobs, routes_gallery, routes_openai, routes_a1111, routes_telemetry):
        app.include_router(module.router)
    app.include_router(routes_system.protected)
    app.include_router(routes_openai.files)
    app.include_router(routes_a1111.internal)  # /internal/ping: a liveness probe, open as in A1111
    for prefix in ("", "/api"):  # ComfyUI serves every route at both
        app.include_router(routes_comfy.router, prefix=prefix)
        app.include_router(routes_comfy.sockets, prefix=prefix)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(StrictJson)  # middleware added later wraps what was added before
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SameSiteGuard, settings=settings)
    app.add_middleware(HostGuard, settings=settings)
    if WEB_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.router.routes.append(WebMount("/", app=StaticFiles(directory=WEB_DIR, html=True), name="web"))
    return app


API_PREFIXES = ("/api/", "/v1/", "/sdapi/", "/internal/", "/health", "/metrics", "/docs", "/redoc", "/openapi.json")
COMFY_PATHS = ("/prompt", "/queue", "/history", "/view", "/upload/", "/object_info", "/system_stats", "/interrupt",
               "/free", "/embeddings", "/models", "/ws")  # fmt: skip


class WebMount(Mount):
    """The browser UI's static files at /, never shadowing an API path (so a wrong method there gets 405)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and is_api_path(scope["path"]):
            return Match.NONE, {}
        return super().matches(scope)


def is_api_path(path: str) -> bool:
    """Whether `path` is one of the APIs' (a whole path segment: "/prompt" and "/prompt/x", not "/prompts.js")."""
    return any(
        path == prefix.rstrip("/") or path.startswith(prefix if prefix.endswith("/") else prefix + "/")
        for prefix in API_PREFIXES + COMFY_PATHS
    )


def default_engines(settings: Settings) -> list[EngineProtocol]:
    """One real engine per device (imported only when no engine is given): its own cache, lock and worker."""
    from sdplay.engine import Engine

    options = settings.load_options()
    return [Engine(options, device=device, monitor=True) for device in settings.devices]


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(
            f"The request body is over the limit of {self.max_bytes:,} bytes.",
            hint="Send a smaller body (the server's max_body_bytes setting).",
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(api_of(scope.get("path", "")), too_large)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large
            return message

        await self.app(scope, limited, send)
