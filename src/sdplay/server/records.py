"""Typed rows of the gallery database: a job, its outcome, and each image it made.

The gallery (sdplay.server.gallery) is the only code that reads or writes SQLite rows: it turns each row into one
of these frozen records (`from_row`) and each record back into the row's columns (`columns`). Routes, schemas and
the worker only ever see records. JSON columns are decoded here, once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdplay.errors import SdplayError
from sdplay.server.jobs import JobStatus

Row = sqlite3.Row | Mapping[str, Any]


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: the error's class name, message, field and hint (as the APIs show it)."""

    type: str
    message: str
    field: str | None = None
    hint: str | None = None

    @classmethod
    def of(cls, error: SdplayError) -> JobFailure:
        return cls(type(error).__name__, str(error), error.field, error.hint)


@dataclass(frozen=True)
class JobResult:
    """What a finished job made: the seed and gallery id of each image, the output size and the phase timings."""

    seeds: tuple[int, ...] = ()
    image_ids: tuple[int, ...] = ()
    width: int | None = None  # None in rows written before sizes were recorded: the request's size then
    height: int | None = None
    timings: dict[str, float] | None = None


@dataclass(frozen=True)
class JobRecord:
    """One job as the gallery keeps it, live or from an earlier run of the server."""

    id: str
    api: str
    status: JobStatus
    created_at: float
    request: dict[str, Any]  # the planned request (defaults filled in), as GenerationRequest.to_dict gives it
    started_at: float | None = None
    finished_at: float | None = None
    error: JobFailure | None = None
    result: JobResult | None = None
    idempotency_key: str | None = None
    body_hash: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> JobRecord:
        error = _json(row["error_json"])
        result = _json(row["result_json"])
        return cls(
            id=row["id"], api=row["api"], status=JobStatus(row["status"]), created_at=row["created_at"],
            request=json.loads(row["request_json"]), started_at=row["started_at"], finished_at=row["finished_at"],
            error=JobFailure(**error) if error else None,
            result=JobResult(tuple(result.get("seeds", ())), tuple(result.get("image_ids", ())), result.get("width"),
                             result.get("height"), result.get("timings")) if result else None,
            idempotency_key=row["idempotency_key"], body_hash=row["body_hash"],
        )  # fmt: skip

    def columns(self) -> dict[str, Any]:
        """The row of `jobs` this record is."""
        return {
            "id": self.id, "api": self.api, "status": self.status.value, "created_at": self.created_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "request_json": json.dumps(self.request), "error_json": failure_json(self.error),
            "result_json": result_json(self.result), "idempotency_key": self.idempotency_key,
            "body_hash": self.body_hash,
        }  # fmt: skip


@dataclass(frozen=True)
class ImageRecord:
    """One finished image in the gallery: how it was made and where its PNG lives under the output folder."""

    job_id: str
    index: int  # its place among the images of its job
    created_at: float
    prompt: str
    negative_prompt: str
    model: str
    seed: int
    width: int | None
    height: int | None
    steps: int | None
    guidance: float | None
    sampler: str | None
    request: dict[str, Any]  # the request that makes exactly this image (its seed, n_images 1)
    file: str  # relative to the output folder
    timings: dict[str, float] | None = None
    telemetry: dict[str, Any] | None = None
    id: int = 0  # the gallery id; 0 until stored

    @classmethod
    def from_row(cls, row: Row) -> ImageRecord:
        return cls(
            id=row["id"], job_id=row["job_id"], index=row["idx"], created_at=row["created_at"], prompt=row["prompt"],
            negative_prompt=row["negative_prompt"], model=row["model"], seed=row["seed"], width=row["width"],
            height=row["height"], steps=row["steps"], guidance=row["guidance"], sampler=row["sampler"],
            request=json.loads(row["request_json"]), timings=_json(row["timings_json"]),
            telemetry=_json(row["telemetry_json"]), file=row["file"],
        )  # fmt: skip

    def columns(self) -> dict[str, Any]:
        """The row of `images` this record is (without its id, which SQLite assigns)."""
        return {
            "job_id": self.job_id, "idx": self.index, "created_at": self.created_at, "prompt": self.prompt,
            "negative_prompt": self.negative_prompt, "model": self.model, "seed": self.seed, "width": self.width,
            "height": self.height, "steps": self.steps, "guidance": self.guidance, "sampler": self.sampler,
            "request_json": json.dumps(self.request),
            "timings_json": json.dumps(self.timings) if self.timings is not None else None,
            "telemetry_json": json.dumps(self.telemetry, default=str) if self.telemetry else None,
            "file": self.file,
        }  # fmt: skip


def failure_json(error: JobFailure | None) -> str | None:
    if error is None:
        return None
    return json.dumps({"type": error.type, "message": error.message, "field": error.field, "hint": error.hint})


def result_json(result: JobResult | None) -> str | None:
    if result is None:
        return None
    return json.dumps({"seeds": list(result.seeds), "image_ids": list(result.image_ids), "width": result.width,
                       "height": result.height, "timings": result.timings})  # fmt: skip


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None
