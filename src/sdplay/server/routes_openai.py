"""OpenAI-compatible images API: POST /v1/images/generations (plain or streamed), edits, variations; models."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from sdplay.errors import Cancelled, InvalidRequest, ModelNotAvailable, SdplayError
from sdplay.server.auth import require_api_key
from sdplay.server.blocking import wait_or_cancel
from sdplay.server.deps import get_service
from sdplay.server.errors import NotFound, error_body
from sdplay.server.forms import file_bytes, read_form
from sdplay.server.jobs import Job, JobStatus
from sdplay.server.schemas_errors import OpenAIError, error_responses
from sdplay.server.schemas_openai import (
    ImageData,
    ImageGenerateRequest,
    ImagesResponse,
    OpenAIModel,
    OpenAIModelList,
)
from sdplay.server.security import public_base_url
from sdplay.server.service import OPENAI_MODEL_NAMES, Service
from sdplay.server.sse import HEADERS, frame, job_events
from sdplay.server.storage import MEDIA_TYPES, b64, encode_file

router = APIRouter(
    prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)], responses=error_responses(OpenAIError)
)
files = APIRouter(
    prefix="/v1", tags=["openai"], responses=error_responses(OpenAIError)
)  # signed links carry their own authority

_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
          "total_tokens": 0}  # fmt: skip


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def generate_images(body: ImageGenerateRequest, request: Request, service: Service = Depends(get_service)):
    """Generate images; with `stream: true` the answer is SSE `image_generation.partial_image` / `.completed` events."""
    prepared = service.plan(body.to_request())
    partials = (body.partial_images or 0) if body.stream else 0
    preview_steps = _spread(partials, prepared.request.steps or 1)
    job_id, _ = service.submit(prepared, "openai", preview_steps=preview_steps)
    job = service.get(job_id)
    assert job is not None
    if body.stream:
        stream = _stream(service, job, body, preview_steps)
        return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)
    await wait_or_cancel(service, job, request)
    _raise_unless_done(job)
    out = job.output
    assert out is not None
    base = public_base_url(request.app.state.settings)  # never the request's Host header
    data = [_image(service, job, i, body, base) for i in range(len(out.files))]
    return ImagesResponse(
        created=int(job.created_at), data=data, output_format=body.format, size=f"{out.width}x{out.height}",
        quality="auto", background="opaque",
    )  # fmt: skip


def _spread(count: int, steps: int) -> frozenset[int]:
    """`count` step numbers spread evenly over 1..steps-1 (the last step is the final image)."""
    if count <= 0 or steps < 2:
        return frozenset()
    return frozenset(max(1, min(steps - 1, round(steps * (k + 1) / (count + 1)))) for k in range(count))


def _raise_unless_done(job: Job) -> None:
    if job.status is JobStatus.DONE:
        return
    if job.error is not None:
        raise job.error
    raise Cancelled("The job was cancelled before it finished.", hint="Send the request again.")


def _image(service: Service, job: Job, index: int, body: ImageGenerateRequest, base_url: str) -> ImageData:
    out = job.output
    assert out is not None
    if body.answer_format == "url":
        token = service.signer.sign(job.id, index, body.format)
        return ImageData(url=f"{base_url}v1/images/files/{token}")
    quality = body.output_compression if body.output_compression is not None else 90
    return ImageData(b64_json=b64(encode_file(out.files[index], body.format, quality)))


async def _stream(
    service: Service, job: Job, body: ImageGenerateRequest, steps: frozenset[int]
) -> AsyncIterator[bytes]:
    """OpenAI's image streaming events for one job; an `error` event if it fails."""
    fmt = body.format
    common = {"created_at": int(time.time()), "quality": "auto", "background": "opaque", "output_format": fmt}
    size = f"{job.request.width}x{job.request.height}"
    sent = 0
    async for event in job_events(job):
        name = event["event"]
        if name == "ping":
            yield b": ping\n\n"
        elif name == "preview" and event["step"] in steps and sent < len(steps):
            data = _convert(event["png"], fmt, (job.request.width or 0, job.request.height or 0))
            yield frame("image_generation.partial_image", {"type": "image_generation.partial_image", "b64_json": data,
                        "size": size, "partial_image_index": sent, **common})  # fmt: skip
            sent += 1
        elif name == "done":
            for i, path in enumerate(job.output.files if job.output else []):
                data = b64(encode_file(path, fmt))
                yield frame("image_generation.completed", {"type": "image_generation.completed", "b64_json": data,
                            "size": size, "usage": _USAGE, "image_index": i, **common})  # fmt: skip
        elif name in ("failed", "cancelled"):
            err = job.error or Cancelled("The job was cancelled before it finished.", hint="Send the request again.")
            yield frame("error", error_body("openai", err if isinstance(err, SdplayError) else SdplayError(str(err))))


def _convert(png: bytes, fmt: str, size: tuple[int, int]) -> str:
    """A preview as a partial image of the size the request asked for, in its format."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        if img.size == size and fmt == "png":
            return b64(png)
        img = img.convert("RGB").resize(size, Image.Resampling.BILINEAR) if all(size) else img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt.upper(), **({"quality": 80} if fmt != "png" else {}))
    return b64(buf.getvalue())


@router.get("/models", response_model=OpenAIModelList)
def list_models(service: Service = Depends(get_service)) -> OpenAIModelList:
    created = int(service.started_at)
    return OpenAIModelList(data=[OpenAIModel(id=m.name, created=created) for m in service.usable_models()])


@router.get("/models/{model_id}", response_model=OpenAIModel)
def get_model(model_id: str = Path(max_length=200), service: Service = Depends(get_service)) -> OpenAIModel:
    """One model, as OpenAI answers it; OpenAI's image model names stand for the server's default model."""
    info = service.catalog.find_model(model_id)
    if model_id.strip().lower() in OPENAI_MODEL_NAMES:
        return OpenAIModel(id=model_id, created=int(service.started_at))
    if info is None or not service.usable(info):
        names = ", ".join(m.name for m in service.usable_models())
        raise ModelNotAvailable(f"The model {model_id!r} does not exist.", field="model", hint=f"Use one of: {names}.")
    return OpenAIModel(id=info.name, created=int(service.started_at))


@files.get(
    "/images/files/{token}",
    response_class=Response,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
)
def image_file(token: str = Path(max_length=200), service: Service = Depends(get_service)) -> Response:
    """An image behind a signed link from a `response_format: url` answer; links expire (url_ttl_s)."""
    job_id, index, fmt = service.signer.verify(token)
    image = service.gallery.image_of_job(job_id, index)
    if image is None or not service.gallery.file_path(image).is_file():
        raise NotFound("This image no longer exists.", hint="It was deleted from the gallery; generate it again.")
    return Response(encode_file(service.gallery.file_path(image), fmt), media_type=MEDIA_TYPES[fmt])


@router.post("/images/edits", response_model=ImagesResponse, response_model_exclude_none=True)
async def edit_images(request: Request, service: Service = Depends(get_service)):
    """Edit an image (multipart `image` or `image[]`): with a `mask` PNG, its transparent pixels are repainted
    (without one, the image's own transparency is the mask; an opaque image is redrawn as image-to-image)."""
    form = await read_form(request)
    image, alpha = _form_image(form)
    mask = _form_mask(form, image.size) if form.get("mask") is not None else alpha
    body = _form_body(form, require_prompt=True)
    strength = _form_float(form, "strength", 1.0 if mask is not None else 0.75)
    req = body.to_request().with_(
        init_image=image, mask=mask, strength=strength, mask_blur=_form_int(form, "mask_blur", 4)
    )
    return await _run_images(service, req, body, request)


@router.post("/images/variations", response_model=ImagesResponse, response_model_exclude_none=True)
async def image_variations(request: Request, service: Service = Depends(get_service)):
    """Variations of an image (multipart `image`): image-to-image with an empty prompt at strength 0.6."""
    form = await read_form(request)
    image, _ = _form_image(form)
    body = _form_body(form, require_prompt=False)
    req = body.to_request().with_(init_image=image, strength=_form_float(form, "strength", 0.6))
    return await _run_images(service, req, body, request)


async def _run_images(service: Service, req, body: ImageGenerateRequest, request: Request) -> ImagesResponse:
    job_id, _ = service.submit(req, "openai")
    job = service.get(job_id)
    assert job is not None
    await wait_or_cancel(service, job, request)
    _raise_unless_done(job)
    out = job.output
    assert out is not None
    data = [_image(service, job, i, body, str(request.base_url)) for i in range(len(out.files))]
    return ImagesResponse(created=int(job.created_at), data=data, output_format=body.format,
                          size=f"{out.width}x{out.height}", quality="auto", background="opaque")  # fmt: skip


def _form_image(form):
    from sdplay.image_input import alpha_mask, decode_image

    files = [*form.getlist("image"), *form.getlist("image[]")]
    if len(files) != 1 or isinstance(files[0], str):
        raise InvalidRequest("Send exactly one image file as `image` (or `image[]`).", field="image",
                             hint="A PNG, JPEG or WebP up to 4096x4096.")  # fmt: skip
    img = decode_image(file_bytes(files[0], "image"), "image", keep_alpha=True)
    return img.convert("RGB"), alpha_mask(img)


def _form_mask(form, size):
    from sdplay.image_input import alpha_mask, decode_image, mask_from_image

    upload = form.get("mask")
    if isinstance(upload, str):
        raise InvalidRequest("mask must be a file (a PNG).", field="mask")
    img = decode_image(file_bytes(upload, "mask"), "mask", keep_alpha=True)
    mask = alpha_mask(img)
    if mask is None:
        raise InvalidRequest("mask has no transparent pixels.", field="mask",
                             hint="Make the area to edit fully transparent (alpha 0) in a PNG.")  # fmt: skip
    return mask_from_image(mask, "mask", size)


def _form_body(form, require_prompt: bool) -> ImageGenerateRequest:
    """The text fields as the generation schema checks them (n, size, response_format, model, sdplay's extras)."""
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and k not in ("mask_blur", "strength")}
    if require_prompt and not fields.get("prompt"):
        raise InvalidRequest("prompt is required.", field="prompt", hint="Describe the edit.")
    typed: dict = {"prompt": fields.pop("prompt", "")}
    for name in ("n", "seed", "steps", "output_compression", "partial_images"):
        if name in fields:
            typed[name] = _as_number(fields.pop(name), name, int)
    if "guidance" in fields:
        typed["guidance"] = _as_number(fields.pop("guidance"), "guidance", float)
    known = set(ImageGenerateRequest.model_fields)
    typed |= {k: v for k, v in fields.items() if k in known and k not in ("stream",)}
    try:
        return ImageGenerateRequest.model_validate(typed)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "form"
        raise InvalidRequest(f"{name}: {err['msg']}.", field=name, hint="Check n, size and response_format.") from None


def _as_number(text: str, name: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, got {text!r}.", field=name) from None


def _form_float(form, name: str, default: float) -> float:
    value = form.get(name)
    return default if value is None or not isinstance(value, str) else _as_number(value, name, float)


def _form_int(form, name: str, default: int) -> int:
    value = form.get(name)
    return default if value is None or not isinstance(value, str) else _as_number(value, name, int)
