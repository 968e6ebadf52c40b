"""Pydantic schemas of the gallery API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sdplay.server.records import ImageRecord


class GalleryItem(BaseModel):
    id: int
    job_id: str
    index: int
    created_at: float
    prompt: str
    negative_prompt: str
    model: str
    seed: int
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    request: dict[str, Any]
    timings: dict[str, float] | None = None
    telemetry: dict[str, Any] | None = None
    url: str = Field(description="PNG bytes of this image (GET).")

    @classmethod
    def of(cls, image: ImageRecord) -> GalleryItem:
        return cls(
            id=image.id, job_id=image.job_id, index=image.index, created_at=image.created_at, prompt=image.prompt,
            negative_prompt=image.negative_prompt, model=image.model, seed=image.seed, width=image.width,
            height=image.height, steps=image.steps, guidance=image.guidance, sampler=image.sampler,
            request=image.request, timings=image.timings, telemetry=image.telemetry,
            url=f"/api/v1/gallery/{image.id}/image",
        )  # fmt: skip


class GalleryPage(BaseModel):
    items: list[GalleryItem]
    total: int
    limit: int
    offset: int
