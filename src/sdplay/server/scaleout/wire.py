"""What travels between the ingress and the engine replicas: step events, errors, results with PNG bytes.

Events are plain dicts with a `kind`: "started" (which replica took the job), "step", "error", "result".
Images travel as PNG bytes, never as paths: replicas write nothing, so the ingress alone records results.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from sdplay import errors
from sdplay.errors import SdplayError
from sdplay.types import GenerationRequest, GenerationResult, PhaseTimings, StepInfo


@dataclass(frozen=True)
class WireResult:
    """A GenerationResult with its images as PNG bytes."""

    pngs: list[bytes]
    seeds: list[int]
    request: GenerationRequest
    timings: PhaseTimings
    peak_memory_bytes: int | None
    nsfw: list[bool] | None
    metadata: dict[str, Any]
    telemetry: dict[str, Any] | None


def to_wire(result: GenerationResult) -> WireResult:
    """Encode the images as PNG (fast, lossless; the ingress writes the final files with metadata)."""
    pngs = []
    for image in result.images:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        pngs.append(buf.getvalue())
    return WireResult(pngs, list(result.seeds), result.request, result.timings, result.peak_memory_bytes,
                      result.nsfw, dict(result.metadata), result.telemetry)  # fmt: skip


def from_wire(wire: WireResult, serving: dict[str, Any] | None = None) -> GenerationResult:
    """Decode the PNGs back into images; `serving` (replica, attempt) joins the metadata."""
    from PIL import Image

    images = []
    for data in wire.pngs:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            images.append(img.copy())
    metadata = dict(wire.metadata) | ({"serving": serving} if serving else {})
    return GenerationResult(images, list(wire.seeds), wire.request, wire.timings, wire.peak_memory_bytes,
                            wire.nsfw, metadata, wire.telemetry)  # fmt: skip


def step_event(info: StepInfo, with_latents: bool) -> dict[str, Any]:
    """A step as an event; latents go along (float16, on the CPU) only if asked for."""
    latents = None
    if with_latents and info.latents is not None:
        import torch

        latents = info.latents.detach().to("cpu", torch.float16)
    fields = ("step", "total_steps", "batch_index", "batch_count", "elapsed", "family")
    return {"kind": "step", "latents": latents, **{name: getattr(info, name) for name in fields}}


def step_info(event: dict[str, Any]) -> StepInfo:
    latents = event.get("latents")
    return StepInfo(event["step"], event["total_steps"], event["batch_index"], event["batch_count"],
                    event["elapsed"], latents.float() if latents is not None else None, event["family"])  # fmt: skip


def error_event(exc: SdplayError) -> dict[str, Any]:
    """An sdplay error as an event: its class name, message, field and hint."""
    return {"kind": "error", "type": type(exc).__name__, "message": exc.message, "field": exc.field, "hint": exc.hint}


def error_from(event: dict[str, Any]) -> SdplayError:
    """The error an "error" event describes, as the same sdplay class where there is one."""
    cls = errors.BY_NAME.get(event["type"], SdplayError)
    return cls(event["message"], field=event.get("field"), hint=event.get("hint"))
