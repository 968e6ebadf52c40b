"""Typed boundaries of the core: what goes into a generation and what comes out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sdplay.errors import InvalidRequest
from sdplay.prompt_syntax import LoraRef, extract_loras

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from sdplay.loading import LoadOptions
    from sdplay.plan import Limits, Plan

MAX_IMAGES = 16
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_PIXELS = 2048 * 2048
MAX_SIDE = 4096
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 10_000
MAX_CLIP_SKIP = 12
MAX_LORAS = 16
MAX_LORA_WEIGHT = 10.0


@dataclass(frozen=True)
class GenerationRequest:
    """One text-to-image job. `None` means "the model's default"."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None
    n_images: int = 1
    batch_size: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int = -1
    sampler: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    loras: tuple[LoraRef, ...] = ()  # besides the prompt's <lora:name:weight> tags
    clip_skip: int | None = None  # A1111's: 1 = the text encoder's last layer, 2 = the one before, ...

    def validate(self) -> GenerationRequest:
        """Check every field; raise InvalidRequest naming the field and the fix."""
        _check_text(self.prompt, "prompt")
        _check_text(self.negative_prompt, "negative_prompt")
        _check_int(self.n_images, "n_images", 1, MAX_IMAGES)
        if self.batch_size is not None:
            _check_int(self.batch_size, "batch_size", 1, MAX_IMAGES)
        if self.steps is not None:
            _check_int(self.steps, "steps", 1, MAX_STEPS)
        if self.guidance is not None:
            _check_float(self.guidance, "guidance", 0.0, MAX_GUIDANCE)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _check_side(value, name)
        if self.width and self.height and self.width * self.height > MAX_PIXELS:
            raise InvalidRequest(
                f"{self.width}x{self.height} is {self.width * self.height:,} pixels, over the limit of {MAX_PIXELS:,}.",
                field="width",
                hint="Choose a smaller size, e.g. 1024x1024, and upscale afterwards.",
            )
        _check_int(self.seed, "seed", -1, MAX_SEED)
        if self.seed + self.n_images - 1 > MAX_SEED:  # image i has seed + i: refuse rather than wrap to 0
            raise InvalidRequest(
                f"seed {self.seed} + {self.n_images} images runs past the largest seed, {MAX_SEED}.",
                field="seed",
                hint=f"Use a seed of at most {MAX_SEED - self.n_images + 1}, or -1 for a random one.",
            )
        if self.clip_skip is not None:
            _check_int(self.clip_skip, "clip_skip", 1, MAX_CLIP_SKIP)
        _check_loras(self.loras)
        return self

    def prompt_loras(self) -> tuple[str, tuple[LoraRef, ...]]:
        """The prompt without its `<lora:…>` tags, and every LoRA asked for (the tags, then `loras`)."""
        text, refs = extract_loras(self.prompt)
        return text, (*refs, *self.loras)

    def with_(self, **changes: Any) -> GenerationRequest:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PhaseTimings:
    """Seconds spent in each phase of one generation."""

    load: float = 0.0
    text_encoding: float = 0.0
    denoising: float = 0.0
    decoding: float = 0.0
    safety_check: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class StepInfo:
    """Progress of a running generation, passed to the per-step callback."""

    step: int
    total_steps: int
    batch_index: int
    batch_count: int
    elapsed: float
    latents: torch.Tensor | None = None
    family: str = "sd1"

    @property
    def fraction(self) -> float:
        done = self.batch_index * self.total_steps + self.step
        return done / max(1, self.batch_count * self.total_steps)


StepCallback = Callable[[StepInfo], None]


@dataclass
class GenerationResult:
    """Images of one request with everything needed to reproduce them."""

    images: list[Image.Image]
    seeds: list[int]
    request: GenerationRequest
    timings: PhaseTimings
    peak_memory_bytes: int | None
    nsfw: list[bool] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] | None = None


def _check_loras(loras: Any) -> None:
    if not isinstance(loras, tuple | list) or not all(isinstance(x, LoraRef) for x in loras):
        raise InvalidRequest("loras must be a list of {name, weight} entries.", field="loras")
    if len(loras) > MAX_LORAS:
        raise InvalidRequest(f"At most {MAX_LORAS} LoRAs at once, got {len(loras)}.", field="loras")
    for ref in loras:
        _check_text(ref.name, "loras")
        for w in (ref.weight, ref.text_weight):
            _check_float(w, "loras", -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)


def _check_text(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be text, got {type(value).__name__}.", field=name)
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"{name} is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,}.",
            field=name,
            hint="Shorten it.",
        )


def _check_int(value: Any, name: str, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be a whole number, got {value!r}.", field=name)
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}, got {value}.", field=name)


def _check_float(value: Any, name: str, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number, got {value!r}.", field=name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be a number between {lo:g} and {hi:g}, got {value}.", field=name)


def _check_side(value: Any, name: str) -> None:
    _check_int(value, name, 8, MAX_SIDE)
    if value % 8:
        lower, upper = value // 8 * 8, value // 8 * 8 + 8
        raise InvalidRequest(
            f"{name} must be a multiple of 8, got {value}.",
            field=name,
            hint=f"Use {lower or 8} or {upper}.",
        )


@dataclass(frozen=True)
class ModelInfo:
    """A catalog entry as shown to users: defaults, and whether it can run here."""

    name: str
    family: str
    native_size: int
    default_sampler: str
    default_steps: int
    default_guidance: float
    available: bool
    loaded: bool = False
    aliases: tuple[str, ...] = ()
    description: str = ""
    sizes: tuple[tuple[int, int], ...] = ()
    how_to_get: str = ""
    usable: bool = False  # the engine can run it: weights here, or models built with random weights


@dataclass(frozen=True)
class Catalog:
    """What an engine offers: its models (each saying whether it can run here) and its sampler names."""

    models: tuple[ModelInfo, ...] = ()
    samplers: tuple[str, ...] = ()

    def find_model(self, name: str) -> ModelInfo | None:
        key = name.strip().lower()
        for info in self.models:
            if key == info.name.lower() or key in (a.lower() for a in info.aliases):
                return info
        return None


@runtime_checkable
class EngineProtocol(Protocol):
    """What every entry point needs from an engine; the real engine, the test fake and the Ray client implement it.

    One engine runs on one device (`device`: its id, or "auto" for a library engine that follows each request's
    device). `plan` is the only resolver; `generate` and `generate_batch` run plans (compatible ones, equal
    `batch_key`, as one UNet batch; each keeps its prompts and seeds) and raise SdplayError subclasses
    (InvalidRequest, ModelNotAvailable, Cancelled, ...); `on_step` is called after every denoising step and raising
    `Cancelled` from it stops the run.
    """

    device: str

    @property
    def options(self) -> LoadOptions: ...

    def catalog(self) -> Catalog: ...

    def plan(self, request: GenerationRequest, limits: Limits | None = None) -> Plan: ...

    def generate(self, plan: Plan, on_step: StepCallback | None = None) -> GenerationResult: ...

    def generate_batch(self, plans: list[Plan], on_step: StepCallback | None = None) -> list[GenerationResult]: ...

    def load(self, model: str | None) -> object: ...

    def unload(self, model: str | None = None) -> None: ...
