"""Native job API: submit, status, cancel, live events (SSE) and result images."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from sdplay.errors import InvalidRequest
from sdplay.server.auth import require_api_key
from sdplay.server.deps import get_service
from sdplay.server.errors import NotFound
from sdplay.server.forms import file_bytes, read_form
from sdplay.server.jobs import Job, JobStatus
from sdplay.server.schemas_errors import NativeError, error_responses
from sdplay.server.schemas_jobs import JobCreate, JobList, JobView, view_of_job, view_of_record
from sdplay.server.service import Service
from sdplay.server.sse import HEADERS, TERMINAL, frame, job_events
from sdplay.server.storage import b64, check_job_id, encode_file

router = APIRouter(
    prefix="/api/v1", tags=["jobs"], dependencies=[Depends(require_api_key)], responses=error_responses(NativeError)
)

JOB_ID = Path(pattern="^[0-9a-f]{32}$", description="The id returned when the job was submitted.")


def _view(service: Service, job_id: str) -> JobView:
    job = service.get(check_job_id(job_id))
    if job is not None:
        return view_of_job(job, service.position(job))
    return view_of_record(service.record(job_id))


@router.post("/jobs", status_code=202, response_model=JobView, summary="Submit a job")
def submit_job(
    body: JobCreate,
    response: Response,
    service: Service = Depends(get_service),
    idempotency_key: str | None = Header(
        None, max_length=200, description="Retrying with the same key never runs twice."
    ),
) -> JobView:
    """Queue a text-to-image job and return at once (202) with its id; poll it or follow its events."""
    idempotency_key = (idempotency_key or "").strip() or None
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    request = body.to_request(service.uploads)
    job_id, replayed = service.submit(request, "native", idempotency_key=idempotency_key, body_hash=digest)
    response.headers["Location"] = f"/api/v1/jobs/{job_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return _view(service, job_id)


@router.post("/uploads", status_code=201, summary="Upload an input image")
async def upload_image(request: Request, service: Service = Depends(get_service)) -> dict:
    """Keep a PNG, JPEG or WebP (multipart field `file`, at most 32 MiB and 4096x4096, checked from its header)
    for later jobs: answers `{"id": "upload:…", "width", "height", "format", "bytes"}`; pass the id as
    `init_image` or `mask`. Uploads live in memory; the oldest are dropped first."""
    form = await read_form(request)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InvalidRequest("Send the image as the multipart file field `file`.", field="file")
    return service.uploads.put(file_bytes(upload, "file"))


@router.get("/jobs", response_model=JobList, summary="List recent jobs")
def list_jobs(
    status: JobStatus | None = None,
    limit: int = Query(50, ge=1, le=500),
    service: Service = Depends(get_service),
) -> JobList:
    """Newest first: live jobs of this run, then older ones from the gallery database."""
    records = service.gallery.list_jobs(status.value if status else None, limit)
    views = [_view(service, record.id) for record in records]
    return JobList(jobs=views)


@router.get("/jobs/{job_id}", response_model=JobView, summary="Job status")
def get_job(job_id: str = JOB_ID, service: Service = Depends(get_service)) -> JobView:
    return _view(service, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobView, summary="Cancel a job")
def cancel_job(job_id: str = JOB_ID, service: Service = Depends(get_service)) -> JobView:
    """A queued job is removed from the queue; a running one stops at its next step."""
    service.cancel(check_job_id(job_id))
    return _view(service, job_id)


@router.get(
    "/jobs/{job_id}/events",
    summary="Live progress and previews (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events_stream(job_id: str = JOB_ID, service: Service = Depends(get_service)) -> StreamingResponse:
    """Events: `status`, `progress`, `preview`, then one of `done`, `failed`, `cancelled` (see docs/api.md)."""
    job = service.get(check_job_id(job_id))
    if job is None:
        view = view_of_record(service.record(job_id))

        async def finished() -> AsyncIterator[bytes]:
            yield frame(view.status.value, view.model_dump(mode="json"))

        return StreamingResponse(finished(), media_type="text/event-stream", headers=HEADERS)
    return StreamingResponse(_stream(service, job), media_type="text/event-stream", headers=HEADERS)


async def _stream(service: Service, job: Job) -> AsyncIterator[bytes]:
    last_position: int | None = -1
    async for event in job_events(job):
        name = event["event"]
        if name == "ping":
            yield b": ping\n\n"
        elif name == "tick":
            position = service.position(job)
            if position != last_position and job.status is JobStatus.QUEUED:
                last_position = position
                yield frame("status", {"id": job.id, "status": "queued", "position": position})
        elif name == "preview":
            yield frame(
                "preview", {"id": job.id, "step": event["step"], "image": "data:image/png;base64," + b64(event["png"])}
            )
        elif name == "progress":
            yield frame("progress", {"id": job.id, **{k: event.get(k) for k in _PROGRESS}})
        else:  # status snapshot, started, or the terminal event
            view = view_of_job(job, service.position(job))
            yield frame(name if name in TERMINAL else "status", view.model_dump(mode="json"))


_PROGRESS = ("step", "total_steps", "progress", "eta_s", "batch_index", "batch_count")


@router.get(
    "/jobs/{job_id}/images/{index}",
    summary="One result image (PNG with metadata)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def job_image(
    job_id: str = JOB_ID, index: int = Path(ge=0, le=1000), service: Service = Depends(get_service)
) -> Response:
    """PNG bytes of image `index` of a finished job, read from the server's output folder."""
    image = service.gallery.image_of_job(check_job_id(job_id), index)
    if image is None:
        raise NotFound(f"Job {job_id} has no image {index}.", hint="GET /api/v1/jobs/{id} lists its images.")
    path = service.gallery.file_path(image)
    if not path.is_file():
        raise NotFound(f"The file of image {index} of job {job_id} is gone.", hint="It was deleted from disk.")
    return Response(encode_file(path), media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})
