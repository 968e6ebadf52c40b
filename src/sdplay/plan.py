"""Resolve once: `plan()` turns a GenerationRequest into a frozen Plan that engines run as is.

A Plan holds everything a generation needs decided: the model's spec and family, the sampler (with the model's
prediction type and schedule), every default filled in, the drawn seed, the device and dtype, the limits it was
checked against, the task, and the key that says which plans may share one UNet batch. Every entry point (CLI,
notebook, the HTTP dialects, Ray, the benchmark) calls `plan` once, through its engine's `plan` method; nothing
downstream validates or resolves again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sdplay.errors import InvalidRequest
from sdplay.inputs import working_size
from sdplay.samplers import SamplerSpec, get_sampler
from sdplay.types import DEFAULT_STRENGTH, MAX_SEED, TASKS, GenerationRequest  # the request's inputs decide its task

if TYPE_CHECKING:
    from sdplay.catalog import ModelSpec
    from sdplay.devices import DeviceInfo
    from sdplay.families import FamilySpec
    from sdplay.loras import AddonFile, ResolvedLora
    from sdplay.vaes import VaeFile


# Request fields that must agree for plans to share one UNet batch (prompts and seeds may differ); with `task`.
BATCH_FIELDS = ("model", "steps", "guidance", "width", "height", "sampler", "device", "dtype", "clip_skip")


@dataclass(frozen=True)
class Limits:
    """What one caller allows: a server's limits are tighter than the library's."""

    max_images: int | None = None  # None: only the library's own bounds (GenerationRequest.validate)
    max_steps: int | None = None
    max_side: int | None = None
    catalog_only: bool = False  # only the engine's listed models (a server: no paths or hub ids from requests)

    def check(self, request: GenerationRequest) -> None:
        _limit(request.n_images, self.max_images, "n_images", "Ask for fewer images per request.")
        _limit(request.steps, self.max_steps, "steps", "Use fewer steps.")
        _limit(request.width, self.max_side, "width", "Choose a smaller size.")
        _limit(request.height, self.max_side, "height", "Choose a smaller size.")


@dataclass(frozen=True)
class SamplerPlan:
    """The sampler a plan runs: the table entry plus what the model adds (prediction type) and its schedule."""

    spec: SamplerSpec
    prediction_type: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def schedule(self) -> str:
        return self.spec.schedule


@dataclass(frozen=True)
class Plan:
    """A fully resolved generation. `request` has every default filled in (model name, steps, guidance, size,
    canonical sampler name, seed, device id, dtype), so it is also the record of what was run."""

    request: GenerationRequest
    model: ModelSpec
    family: FamilySpec
    sampler: SamplerPlan
    device: DeviceInfo
    dtype: str
    limits: Limits = field(default_factory=Limits)
    task: str = "txt2img"
    loras: tuple[ResolvedLora, ...] = ()  # the prompt's <lora:…> tags and request.loras, found in the LoRA folder
    embeddings: tuple[AddonFile, ...] = ()  # textual-inversion files whose names the prompts use
    vae: VaeFile | None = None  # a VAE in place of the model's own

    @property
    def batch_key(self) -> tuple:
        """Plans with equal keys may run as one UNet batch (task kinds, strengths, fills, hires, LoRA sets,
        embeddings and VAEs never mix)."""
        return (self.task, *(getattr(self.request, name) for name in BATCH_FIELDS), *self.request.batch_fields(),
                *self.addon_key)  # fmt: skip

    @property
    def addon_key(self) -> tuple:
        """The LoRAs, embeddings and VAE of the plan, in the order of ADDON_FIELDS."""
        return (tuple(lo.key for lo in self.loras), tuple((f.name, f.path, f.size, f.mtime) for f in self.embeddings),
                self.vae.key if self.vae is not None else None)  # fmt: skip

    @property
    def seeds(self) -> list[int]:
        """One seed per image: the request's seed, then the next ones."""
        return [(self.request.seed + k) % (MAX_SEED + 1) for k in range(self.request.n_images)]


ModelResolver = Callable[[str | None], "ModelSpec"]
LoraResolver = Callable[[str], "AddonFile"]
EmbeddingFinder = Callable[[list[str], int], "tuple[AddonFile, ...]"]  # (texts, steps) -> the embeddings they use
VaeResolver = Callable[[str | None], "VaeFile | None"]  # request.vae -> the VAE file, None for the model's own
ADDON_FIELDS = ("loras", "embeddings", "vae")


def plan(
    request: GenerationRequest,
    *,
    models: ModelResolver,
    device: DeviceInfo,
    limits: Limits | None = None,
    task: str | None = None,
    loras: LoraResolver | None = None,
    embeddings: EmbeddingFinder | None = None,
    vaes: VaeResolver | None = None,
) -> Plan:
    """Validate `request` against the limits, resolve its model with `models`, pin it to `device`, fill defaults."""
    from sdplay.devices import resolve_device, resolve_dtype

    limits = limits or Limits()
    limits.check(request)
    request.validate()
    task = task or request.task
    if task not in TASKS:
        raise InvalidRequest(f"Unknown task {task!r}.", field="task", hint=f"Use one of: {', '.join(TASKS)}.")
    if task != request.task:
        hint = "Give an init image for img2img, and a mask or an outpaint for inpaint."
        raise InvalidRequest(
            f"A {task} plan needs its inputs; this request is {request.task}.", field="task", hint=hint
        )
    spec = models(request.model)
    dev = resolve_device(request.device, [device])
    sampler = get_sampler(request.sampler or spec.default_sampler)
    whole = request.batch_size is None or request.batch_size >= request.n_images  # one batch: no batch size
    width, height = working_size(request, spec.native_size)
    resolved = request.with_(
        model=spec.name,
        batch_size=None if whole else request.batch_size,
        steps=request.steps or spec.default_steps,
        guidance=spec.default_guidance if request.guidance is None else request.guidance,
        width=width,
        height=height,
        **image_defaults(request),
        sampler=sampler.name,
        seed=random.randint(0, MAX_SEED + 1 - request.n_images) if request.seed == -1 else request.seed,  # no wrap
        device=dev.id,
        dtype=resolve_dtype(request.dtype, dev),
    )
    limits.check(resolved)  # the model's defaults count too
    if resolved.hires is not None:  # the second pass's size, refused now rather than after the first pass
        from sdplay.hires import target_size
        from sdplay.types import MAX_PIXELS, MAX_SIDE

        side = min(MAX_SIDE, limits.max_side or MAX_SIDE)
        target_size(resolved.width, resolved.height, resolved.hires, MAX_PIXELS, side)
    return Plan(
        request=resolved,
        model=spec,
        family=spec.family_spec,
        sampler=SamplerPlan(sampler, spec.prediction_type),
        device=dev,
        dtype=resolved.dtype,
        limits=limits,
        task=task,
        loras=_resolve_loras(resolved, loras),
        embeddings=_find_embeddings(resolved, embeddings),
        vae=_resolve_vae(resolved, vaes),
    )


def image_defaults(request: GenerationRequest) -> dict:
    """Strength filled in (0.75) where there is an init image; fill and resize mode under their canonical names."""
    from sdplay.masking import fill_mode, resize_mode

    strength = None
    if request.init_image is not None:
        strength = DEFAULT_STRENGTH if request.strength is None else request.strength
    return {"strength": strength, "inpaint_fill": fill_mode(request.inpaint_fill),
            "resize_mode": resize_mode(request.resize_mode)}  # fmt: skip


def _resolve_loras(request: GenerationRequest, find: LoraResolver | None) -> tuple[ResolvedLora, ...]:
    """Each LoRA asked for, found by name; the same LoRA twice counts once (the last strengths win)."""
    from sdplay.loras import ResolvedLora

    _, refs = request.prompt_loras()
    if not refs:
        return ()
    if find is None:
        raise InvalidRequest("This engine has no LoRA folder.", field="loras", hint="Start it with --lora-dir.")
    by_name = {ref.name: ref for ref in refs}
    return tuple(ResolvedLora(find(name), ref) for name, ref in by_name.items())


def _find_embeddings(request: GenerationRequest, find: EmbeddingFinder | None) -> tuple[AddonFile, ...]:
    """The textual-inversion files whose names the prompt (without its LoRA tags) or the negative prompt use."""
    if find is None:
        return ()
    return find([request.prompt_loras()[0], request.negative_prompt], request.steps or 1)


def _resolve_vae(request: GenerationRequest, find: VaeResolver | None) -> VaeFile | None:
    """The VAE asked for ("Automatic"/None: the engine's default, "None": the model's own)."""
    if find is None:
        if request.vae is None or request.vae.strip().lower() in ("automatic", "none", ""):
            return None
        raise InvalidRequest("This engine has no VAE folder.", field="vae", hint="Start it with --vae-dir.")
    return find(request.vae)


def check_compatible(plans: list[Plan]) -> None:
    """Refuse to batch plans whose batch keys differ, naming the first field that differs."""
    keys = {p.batch_key for p in plans}
    if len(keys) <= 1:
        return
    n = len(ADDON_FIELDS)
    for i, name in enumerate(ADDON_FIELDS):
        if len({k[-n + i] for k in keys}) > 1:
            raise InvalidRequest(f"Requests in one batch must share {name} (theirs differ).", field=name)
    for i, name in enumerate(("task", *BATCH_FIELDS)):
        values = {k[i] for k in keys}
        if len(values) > 1:
            raise InvalidRequest(f"Requests in one batch must share {name}; got {sorted(map(str, values))}.")
    raise InvalidRequest("Requests in one batch must share the denoising strength, masked-content fill and hires fix.")


def _limit(value: int | None, limit: int | None, name: str, hint: str) -> None:
    if limit is None or value is None or isinstance(value, bool):
        return
    if isinstance(value, int) and value > limit:
        raise InvalidRequest(f"{name} is {value}; this server allows at most {limit}.", field=name, hint=hint)
