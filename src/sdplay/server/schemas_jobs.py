"""Pydantic schemas of the native job API, and their conversion to and from the core dataclasses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdplay.samplers import combine_sampler
from sdplay.server.jobs import Job, JobStatus
from sdplay.server.jsontypes import IntegralFloats
from sdplay.server.records import JobRecord, JobResult
from sdplay.server.uploads import Uploads
from sdplay.types import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    GenerationRequest,
    HiresFix,
)


class OutpaintBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    left: int = Field(0, ge=0, le=2048)
    right: int = Field(0, ge=0, le=2048)
    top: int = Field(0, ge=0, le=2048)
    bottom: int = Field(0, ge=0, le=2048)


class HiresBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    scale: float = Field(2.0, ge=1, le=8)
    width: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    height: int = Field(0, ge=0, le=MAX_SIDE, multiple_of=8)
    upscaler: str = Field("Latent", description="A name from GET /sdapi/v1/latent-upscale-modes or /upscalers.")
    steps: int = Field(0, ge=0, le=MAX_STEPS)
    strength: float = Field(0.7, ge=0, le=1)


class JobCreate(IntegralFloats):
    """A job: text-to-image, or image-to-image / inpainting / outpainting with an init image. Omitted fields take
    the model's defaults. Images are base64 (bare or a data URL) or `upload:ID` from POST /api/v1/uploads."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="What to draw.")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(None, description="A name or alias from GET /api/v1/models.")
    n_images: int = Field(1, ge=1, le=MAX_IMAGES)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance: float | None = Field(None, ge=0, le=MAX_GUIDANCE)
    width: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)
    height: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 draws a random seed.")
    sampler: str | None = Field(None, description="A name from GET /api/v1/samplers, e.g. 'DPM++ 2M Karras'.")
    scheduler: str | None = Field(None, description="Optional schedule type (Automatic, Uniform, Karras).")
    init_image: str | None = Field(None, max_length=48 * 2**20, description="Image to start from.")
    mask: str | None = Field(None, max_length=48 * 2**20, description="White = repaint; the init image's size.")
    strength: float | None = Field(None, ge=0, le=1, description="Denoising strength (default 0.75).")
    mask_blur: int = Field(4, ge=0, le=64)
    mask_invert: bool = False
    inpaint_fill: Literal["fill", "original", "latent noise", "latent nothing"] = "original"
    inpaint_full_res: bool = Field(False, description="Inpaint a crop around the mask at the full working size.")
    inpaint_padding: int = Field(32, ge=0, le=512)
    resize_mode: Literal["just resize", "crop and resize", "resize and fill"] = "just resize"
    outpaint: OutpaintBody | None = None
    hires: HiresBody | None = Field(None, description="Hires fix (text-to-image only).")
    vae: str | None = Field(None, max_length=255, description="A VAE from GET /sdapi/v1/sd-vae; 'Automatic' (the "
                            "default): the server's, 'None': the model's own.")  # fmt: skip

    def to_request(self, uploads: Uploads | None = None) -> GenerationRequest:
        return self._text_request().with_(**self._image_fields(uploads or Uploads()))

    def _image_fields(self, uploads: Uploads) -> dict[str, Any]:
        from sdplay.image_input import decode_image, decode_mask
        from sdplay.masking import Outpaint

        fields: dict[str, Any] = {"hires": HiresFix(**self.hires.model_dump()) if self.hires else None}
        if self.init_image is None:
            return fields
        image = decode_image(uploads.resolve(self.init_image, "init_image"), "init_image")
        mask_bytes = uploads.resolve(self.mask, "mask")
        return fields | {
            "init_image": image, "mask": decode_mask(mask_bytes, "mask", image.size) if mask_bytes else None,
            "strength": self.strength, "mask_blur": self.mask_blur, "mask_invert": self.mask_invert,
            "inpaint_fill": self.inpaint_fill, "inpaint_full_res": self.inpaint_full_res,
            "inpaint_padding": self.inpaint_padding, "resize_mode": self.resize_mode,
            "outpaint": Outpaint(**self.outpaint.model_dump()) if self.outpaint else None,
        }  # fmt: skip

    def _text_request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            model=self.model,
            n_images=self.n_images,
            steps=self.steps,
            guidance=self.guidance,
            width=self.width,
            height=self.height,
            seed=self.seed,
            sampler=combine_sampler(self.sampler, self.scheduler),
            vae=self.vae,
        )


class JobError(BaseModel):
    type: str
    message: str
    field: str | None = None
    hint: str | None = None


class JobImage(BaseModel):
    index: int
    seed: int
    url: str = Field(description="PNG bytes of this image (GET).")
    gallery_id: int | None = None


class JobView(BaseModel):
    """Where a job stands: queued (with position), running (step k of n, ETA), done, failed or cancelled."""

    id: str
    status: JobStatus
    api: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    position: int | None = Field(None, description="Jobs ahead of this one in the queue (0 = next).")
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    eta_s: float | None = None
    error: JobError | None = None
    request: dict[str, Any]
    images: list[JobImage] = []
    width: int | None = None
    height: int | None = None
    timings: dict[str, float] | None = None


class JobList(BaseModel):
    jobs: list[JobView]


def _images(job_id: str, seeds: list[int], ids: list[int]) -> list[JobImage]:
    return [
        JobImage(
            index=i, seed=seed, url=f"/api/v1/jobs/{job_id}/images/{i}", gallery_id=ids[i] if i < len(ids) else None
        )
        for i, seed in enumerate(seeds)
    ]


def view_of_job(job: Job, position: int | None) -> JobView:
    """The view of a live job."""
    err = job.error
    out = job.output
    return JobView(
        id=job.id,
        status=job.status,
        api=job.api,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        position=position,
        step=job.step,
        total_steps=job.total_steps,
        progress=1.0 if job.status is JobStatus.DONE else job.progress,
        eta_s=job.eta_s if job.status is JobStatus.RUNNING else None,
        error=JobError(type=type(err).__name__, message=str(err), field=err.field, hint=err.hint) if err else None,
        request=job.request.to_dict(),
        images=_images(job.id, out.seeds, out.image_ids) if out else [],
        width=out.width if out else job.request.width,
        height=out.height if out else job.request.height,
        timings=out.timings if out else None,
    )


def view_of_record(record: JobRecord) -> JobView:
    """The view of a job known only from the gallery database (older, or from a previous run)."""
    result, error, request = record.result or JobResult(), record.error, record.request
    return JobView(
        id=record.id,
        status=record.status,
        api=record.api,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        progress=1.0 if record.status is JobStatus.DONE else 0.0,
        error=JobError(type=error.type, message=error.message, field=error.field, hint=error.hint) if error else None,
        request=request,
        images=_images(record.id, list(result.seeds), list(result.image_ids)),
        width=result.width if result.width is not None else request.get("width"),
        height=result.height if result.height is not None else request.get("height"),
        timings=result.timings,
    )
