"""The Ray Serve application: the existing FastAPI app as ingress, over engine replicas.

`sdplay serve --ray` deploys it; so does `serve run sdplay.server.scaleout.app:build` (arguments as key=value).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ray import serve

from sdplay.server.scaleout.client import RayEngineClient
from sdplay.server.scaleout.options import (
    RayOptions,
    engine_deployment_options,
    ingress_deployment_options,
    replica_load_options,
)
from sdplay.server.scaleout.replica import EngineReplica
from sdplay.server.settings import Settings

log = logging.getLogger(__name__)


@serve.ingress()
class Ingress:
    """One replica on the head node: `create_app` (routes, job queue, gallery) over a RayEngineClient."""

    async def __init__(self, engine, settings: Settings, options: RayOptions):
        self.client = RayEngineClient(engine, options, replica_load_options(settings, options))
        await self.client.fetch_catalog(options.start_timeout_s)
        self.settings = ingress_settings(settings, options)
        self.app_name = serve.get_replica_context().app_name

    def __serve_build_asgi_app__(self):
        from sdplay.server.app import create_app

        app = create_app(self.settings, [self.client] * len(self.settings.devices))  # one worker per dispatch slot
        add_cluster_route(app, self.client, self.app_name)
        return app


def ingress_settings(settings: Settings, options: RayOptions) -> Settings:
    """One worker thread per request the replicas can hold (Ray sees the queue); replicas do the preloading."""
    return replace(settings, devices=tuple(f"ray-{i}" for i in range(options.dispatch_slots)), models_preload=())


def add_cluster_route(app, client: RayEngineClient, app_name: str) -> None:
    """GET /api/v1/cluster: which replica runs what, results per replica, retries and failures."""
    from fastapi import APIRouter, Depends

    from sdplay.server.auth import require_api_key

    router = APIRouter(tags=["system"], dependencies=[Depends(require_api_key)])

    @router.get("/api/v1/cluster", summary="Ray Serve: replicas, running calls, retries")
    def cluster() -> dict[str, Any]:
        return {"backend": "ray", "app": app_name, **client.status()}

    routes = app.router.routes
    before = len(routes)
    app.include_router(router)
    added = routes[before:]
    del routes[before:]
    routes[0:0] = added  # ahead of the static web UI mounted at "/", which would answer first


def application(settings: Settings, options: RayOptions):
    """The bound application: ingress (HTTP) -> engine deployment (one replica per GPU or CPU slot).

    Every replica gets the server's load options (fast path, memory options, safety checker, LoRA folder), so
    `sdplay serve --ray --no-fast --vae-tiling` loads models as `sdplay serve --no-fast --vae-tiling` does.
    """
    engine = serve.deployment(EngineReplica).options(**engine_deployment_options(options))
    ingress = serve.deployment(Ingress).options(**ingress_deployment_options(options))
    return ingress.bind(engine.bind(options, replica_load_options(settings, options)), settings, options)


def options_for(settings: Settings, options: RayOptions) -> RayOptions:
    """Carry the server settings the replicas need (preloads, random weights) into the Ray options."""
    preload = options.preload or settings.models_preload
    return replace(options, preload=tuple(preload), random_weights=options.random_weights or settings.random_weights)


def build(args: dict[str, str]):
    """Entry point of `serve run sdplay.server.scaleout.app:build key=value ...`.

    Keys are RayOptions fields (replicas=4, max_replicas=8, address=HOST:6379, ...); the server settings
    come from SDPLAY_* variables (SDPLAY_MODELS_PRELOAD, SDPLAY_API_KEY, ...). HTTP host and port are
    Serve's own (127.0.0.1:8000 unless a Serve config file says otherwise).
    """
    import ray

    options = RayOptions.from_args(args)
    settings = Settings.from_env().check()
    if not ray.is_initialized():  # `serve run` builds before it connects; the defaults depend on the cluster
        ray.init(address=options.address, namespace="serve")
    return application(settings, options_for(settings, options).resolve(ray.cluster_resources()))


def deploy(settings: Settings, options: RayOptions, *, blocking: bool = False):
    """Start Serve's HTTP proxy (head node only) on settings.host:port and run the application.

    Ray must be initialised. If Serve already runs on the cluster, its HTTP options stay as they are.
    """
    import ray

    options = options_for(settings, options).resolve(ray.cluster_resources())
    serve.start(proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port})
    log.info("deploying %s: %s", options.app_name, engine_deployment_options(options))
    return serve.run(application(settings, options), name=options.app_name, route_prefix="/", blocking=blocking)
