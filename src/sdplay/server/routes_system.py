"""Health, Prometheus metrics, models, samplers and server limits."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from sdplay import __version__
from sdplay.errors import ModelNotAvailable
from sdplay.samplers import SCHEDULE_TYPES as SCHEDULERS
from sdplay.server.auth import require_api_key
from sdplay.server.schemas_errors import NativeError, error_responses
from sdplay.server.schemas_system import Batching, Health, Limits, ModelList, ModelView, SamplerList, SystemView
from sdplay.server.service import Service

router = APIRouter(tags=["system"])
protected = APIRouter(tags=["system"], dependencies=[Depends(require_api_key)], responses=error_responses(NativeError))


def get_service(request: Request) -> Service:
    return request.app.state.service


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(service: Service = Depends(get_service)):
    """200 while every worker is alive, 503 otherwise."""
    alive = sum(w.is_alive() for w in service.workers)
    body = Health(
        status="ok" if service.healthy() else "unhealthy", queue_depth=len(service.queue), workers_alive=alive
    )
    return JSONResponse(body.model_dump(), status_code=200 if service.healthy() else 503)


@protected.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(service: Service = Depends(get_service)) -> Response:
    """Prometheus text format: queue depth, job latency, images generated, batch sizes (+ device gauges)."""
    data, content_type = service.metrics.render()
    return Response(data, media_type=content_type)


@protected.get("/api/v1/models", response_model=ModelList)
def models(service: Service = Depends(get_service)) -> ModelList:
    try:
        default = service.default_model()
    except ModelNotAvailable:
        default = None
    return ModelList(models=[ModelView.of(m, service.usable(m)) for m in service.catalog.models], default=default)


@protected.get("/api/v1/samplers", response_model=SamplerList)
def samplers(service: Service = Depends(get_service)) -> SamplerList:
    return SamplerList(samplers=service.catalog.samplers, schedulers=[label for _, label in SCHEDULERS])


@protected.get("/api/v1/system", response_model=SystemView)
def system(service: Service = Depends(get_service)) -> SystemView:
    s = service.settings
    try:
        work = service.work_limits(service.default_model())
    except ModelNotAvailable:
        work = None
    return SystemView(
        version=__version__,
        uptime_s=time.time() - service.started_at,
        queue_depth=len(service.queue),
        running=len(service.running()),
        workers=[w.device for w in service.workers],
        limits=Limits(
            max_images=s.max_images,
            max_steps=s.max_steps,
            max_side=s.max_side,
            max_queue=s.max_queue,
            max_body_bytes=s.max_body_bytes,
            max_pixels=work.max_pixels if work else None,
            max_work=work.max_work if work else None,
            max_request_s=work.max_seconds if work else None,
        ),
        batching=Batching(max_batch=s.max_batch, window_ms=s.batch_window_ms),
        auth={"api_key": bool(s.api_key), "api_auth": bool(s.api_auth)},
    )
