"""Pydantic schemas of the gallery API."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field


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
    def of(cls, row: dict[str, Any]) -> GalleryItem:
        return cls(
            id=row["id"], job_id=row["job_id"], index=row["idx"], created_at=row["created_at"], prompt=row["prompt"],
            negative_prompt=row["negative_prompt"], model=row["model"], seed=row["seed"], width=row["width"],
            height=row["height"], steps=row["steps"], guidance=row["guidance"], sampler=row["sampler"],
            request=json.loads(row["request_json"]),
            timings=json.loads(row["timings_json"]) if row["timings_json"] else None,
            telemetry=json.loads(row["telemetry_json"]) if row["telemetry_json"] else None,
            url=f"/api/v1/gallery/{row['id']}/image",
        )  # fmt: skip


class GalleryPage(BaseModel):
    items: list[GalleryItem]
    total: int
    limit: int
    offset: int
