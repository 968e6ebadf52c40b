"""Pydantic schemas of the system endpoints: models, samplers, limits, health."""

from __future__ import annotations

from dataclasses import asdict

from pydantic import BaseModel, Field

from sdplay.types import ModelInfo


class ModelView(BaseModel):
    name: str
    family: str
    native_size: int
    default_sampler: str
    default_steps: int
    default_guidance: float
    available: bool
    usable: bool = Field(description="The server can run it: weights here, or models built with random weights.")
    loaded: bool = False
    aliases: list[str] = []
    description: str = ""
    sizes: list[tuple[int, int]] = []
    how_to_get: str = ""

    @classmethod
    def of(cls, info: ModelInfo, usable: bool) -> ModelView:
        return cls(**(asdict(info) | {"usable": usable}))


class ModelList(BaseModel):
    models: list[ModelView]
    default: str | None


class SamplerList(BaseModel):
    samplers: list[str]
    schedulers: list[str]


class Limits(BaseModel):
    max_images: int
    max_steps: int
    max_side: int
    max_queue: int
    max_body_bytes: int
    max_pixels: int | None = None  # width x height per image, on every device
    max_work: int | None = None  # width x height x steps x images per request (default model, measured speed)
    max_request_s: float | None = None  # time limit of one request


class Batching(BaseModel):
    max_batch: int
    window_ms: float


class SystemView(BaseModel):
    version: str
    uptime_s: float
    queue_depth: int
    running: int
    workers: list[str]
    limits: Limits
    batching: Batching
    auth: dict[str, bool]


class Health(BaseModel):
    status: str
    queue_depth: int
    workers_alive: int
