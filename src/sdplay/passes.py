"""Denoising passes per task over one set of loaded modules: text-to-image, image-to-image, inpainting (latent
masking on 4-channel UNets, diffusers' conditioning on 9-channel inpainting UNets), hires fix second pass."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdplay.prompts import execution_device
from sdplay.samplers import make_scheduler
from sdplay.types import StepInfo

if TYPE_CHECKING:
    from sdplay.loading import LoadedModel

_CARRIED = ("sdplay_fast", "sdplay_execution_device")  # what sdplay keeps on a pipeline, shared by its tasks


def is_inpainting_model(pipe: Any) -> bool:
    """A dedicated inpainting UNet: 4 latent + 1 mask + 4 masked-image channels in."""
    return pipe.unet.config.in_channels == 9


def task_pipe(loaded: LoadedModel, task: str) -> Any:
    """The pipeline for a task over the same modules as the loaded one (no second copy of any weight), of the
    family's pipeline class for that task (sdplay.families)."""
    import diffusers

    base = loaded.pipe
    if task == "txt2img" and not is_inpainting_model(base):
        return base
    if task == "txt2img":
        task = "inpaint"  # an inpainting UNet draws from nothing as inpainting of a fully masked blank image
    cache = base.__dict__.setdefault("sdplay_tasks", {})
    if task not in cache:
        name = loaded.family_spec.pipeline_class(task)  # the family's diffusers class for the task, as data
        if type(base).__name__ == name:
            cache[task] = base
        else:
            pipe = over_same_modules(getattr(diffusers, name), base)
            pipe.set_progress_bar_config(disable=True)
            for attr in _CARRIED:
                if attr in base.__dict__:
                    pipe.__dict__[attr] = base.__dict__[attr]
            cache[task] = pipe
    return cache[task]


def over_same_modules(cls: Any, base: Any) -> Any:
    """`cls` over `base`'s modules and settings, as diffusers' `from_pipe` makes it but without its final cast.

    diffusers 0.42's `from_pipe` ends with `.to(dtype=float32)` unless given one dtype: it turned a float16 model
    into float32 for every task at its first image-to-image or inpainting request, and one dtype cannot fit SDXL's
    float32 VAE beside its float16 UNet (nor the fast path's float8 layers).
    """
    expected, optional = cls._get_signature_keys(cls)
    modules = {k: v for k, v in base.components.items() if k in expected}
    settings = {k: v for k, v in base.config.items() if k in optional and k not in modules}
    pipe = cls(**modules, **settings)
    if base.config.get("_name_or_path") is not None:
        pipe.register_to_config(_name_or_path=base.config["_name_or_path"])
    return pipe


class Progress:
    """Per-step reports across passes: step counts add up over the first pass and the hires pass."""

    def __init__(self, on_step, index: int, count: int, family: str, total: int):
        self.on_step, self.index, self.count, self.family = on_step, index, count, family
        self.total, self.done = total, 0
        self.scheduler = ""  # class name of the last pass's scheduler
        self.started = time.perf_counter()

    def callback(self, offset: int, emb: Any = None):
        """The step-end callback of one pass: reports progress and, for prompt editing or alternation, hands the
        next step's conditioning to the pipeline."""

        def step_end(pipe, i, _t, kwargs):
            self.done = offset + i + 1
            if self.on_step is not None:
                self.total = max(self.total, self.done)
                elapsed = time.perf_counter() - self.started
                info = StepInfo(self.done, self.total, self.index, self.count, elapsed, kwargs["latents"], self.family)
                self.on_step(info)
            if emb is not None and emb.schedule:
                kwargs |= emb.step_inputs(i + 1, pipe.do_classifier_free_guidance)
            return kwargs

        return step_end


def step_tensors(emb: Any) -> list[str]:
    """The in-loop tensors the step callback sees: the conditioning too when it changes over the steps."""
    if emb is None or not emb.schedule:
        return ["latents"]
    return ["latents", "prompt_embeds"] + (["add_text_embeds"] if emb.pooled is not None else [])


def pass_steps(steps: int, strength: float) -> int:
    """Denoising steps an image-to-image pass runs: diffusers' int(steps * strength), at least one."""
    return max(1, min(int(steps * strength), steps))


def refiner_handoff(task: str, strength: float, switch_at: float) -> float:
    """The fraction of the noise schedule where the refiner takes over (diffusers' denoising_end/start): A1111's
    "switch at" counts the steps actually run, so after image-to-image, which starts at 1 - strength of the
    schedule, it hands over at 1 - strength * (1 - switch_at)."""
    return switch_at if task == "txt2img" else 1.0 - strength * (1.0 - switch_at)


def pass_strength(steps: int, strength: float) -> float:
    """A strength that runs at least one step (strength 0 still runs the last, least noisy step)."""
    return max(strength, 1.0 / steps)


@dataclass
class PassArgs:
    """What every pass shares: prompt conditioning, the per-image generators, the size and the sampler."""

    emb: Any
    generators: list
    sampler: str | None
    steps: int
    guidance: float
    width: int
    height: int
    item_seeds: list[int]


def new_scheduler(loaded: LoadedModel, pipe: Any, args: PassArgs) -> str:
    """A fresh scheduler for this pass: no step state is shared between requests or passes."""
    classes = getattr(pipe, "sdplay_schedulers", None)  # sdplay.light's pipeline brings its own; diffusers' otherwise
    pipe.scheduler = make_scheduler(args.sampler, loaded.scheduler_config, args.item_seeds, classes)
    if getattr(pipe, "sdplay_fast", None) is not None:  # the fast path keeps step arithmetic off the device
        pipe.sdplay_fast.prepare_scheduler(pipe.scheduler)
    return type(pipe.scheduler).__name__


def _common(args: PassArgs, progress: Progress, offset: int) -> dict[str, Any]:
    return {
        **args.emb.pipeline_kwargs(),
        "height": args.height,
        "width": args.width,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "generator": args.generators,
        "output_type": "latent",
        "callback_on_step_end": progress.callback(offset, args.emb),
        "callback_on_step_end_tensor_inputs": step_tensors(args.emb),
    }


def _without_size(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in ("height", "width")}


def txt2img(loaded: LoadedModel, args: PassArgs, progress: Progress, end: float | None = None) -> Any:
    """Noise from CPU generators, one per image (same seed, same image on any device), then denoise (up to the
    fraction `end` of the schedule when a refiner takes over: SDXL's `denoising_end`)."""
    import torch

    pipe = loaded.pipe
    progress.scheduler = new_scheduler(loaded, pipe, args)
    scale = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, args.height // scale, args.width // scale)
    latents = torch.stack([torch.randn(shape, generator=g) for g in args.generators])  # (B, C, H/8, W/8)
    latents = latents.to(execution_device(pipe), args.emb.prompt.dtype)
    extra = {"denoising_end": end} if end is not None else {}
    return pipe(**_common(args, progress, 0), latents=latents, **extra).images


def refine(refiner: LoadedModel, args: PassArgs, progress: Progress, latents: Any, prompts, negatives, start) -> Any:
    """The SDXL refiner finishes the schedule from the fraction `start` in latent space (`denoising_start`); it
    encodes the prompts with its own (second) text encoder."""
    pipe = refiner.pipe
    pipe.set_progress_bar_config(disable=True)
    progress.scheduler = new_scheduler(refiner, pipe, args)
    kwargs = _without_size(_common(args, progress, progress.done))
    for key in ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"):
        kwargs.pop(key, None)
    image = latents.to(execution_device(pipe), pipe.unet.dtype)
    return pipe(**kwargs, prompt=prompts, negative_prompt=negatives, image=image, denoising_start=start).images


def img2img(
    loaded: LoadedModel, args: PassArgs, progress: Progress, latents: Any, strength: float, offset=0, end=None
) -> Any:
    """Noise the image latents to `strength` of the schedule and denoise from there, up to the fraction `end` of
    the schedule when a refiner takes over (an inpainting UNet does it as inpainting with all of the image
    masked)."""
    import torch

    kwargs = _common(args, progress, offset) | {"strength": pass_strength(args.steps, strength)}
    if end is not None:
        kwargs["denoising_end"] = end
    if is_inpainting_model(loaded.pipe):
        pipe = task_pipe(loaded, "inpaint")
        progress.scheduler = new_scheduler(loaded, pipe, args)
        dev, dtype = execution_device(pipe), args.emb.prompt.dtype
        b, _, h, w = latents.shape
        scale = pipe.vae_scale_factor
        mask = torch.ones(b, 1, h * scale, w * scale, device=dev, dtype=dtype)
        masked = encode_images(pipe, torch.zeros(b, 3, h * scale, w * scale, device=dev))
        return pipe(
            **kwargs, image=latents.to(dev, dtype), mask_image=mask, masked_image_latents=masked.to(dtype)
        ).images
    pipe = task_pipe(loaded, "img2img")
    progress.scheduler = new_scheduler(loaded, pipe, args)
    kwargs = _without_size(kwargs)  # image-to-image pipelines take the size from the image
    return pipe(**kwargs, image=latents.to(execution_device(pipe), args.emb.prompt.dtype)).images


def inpaint(
    loaded: LoadedModel,
    args: PassArgs,
    progress: Progress,
    images: list,
    masks: list,
    strength: float,
    fill: str,
    end: float | None = None,
) -> Any:
    """Repaint the white of each mask: latent masking keeps the rest on a 4-channel UNet at every step; a 9-channel
    UNet also sees the mask and the masked image (`end`: stop there for a refiner, SDXL only)."""
    import torch

    from sdplay.masking import latent_fill

    pipe = task_pipe(loaded, "inpaint")
    progress.scheduler = new_scheduler(loaded, pipe, args)
    dev, dtype = execution_device(pipe), args.emb.prompt.dtype
    pixels = pil_to_tensor(images).to(dev)  # (B, 3, H, W) in [-1, 1]
    mask = pil_to_tensor(masks, signed=False).to(dev)  # (B, 1, H, W) in [0, 1]
    latents = encode_images(pipe, pixels)
    small = torch.nn.functional.interpolate((mask >= 0.5).float(), size=latents.shape[-2:])  # as diffusers does
    noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in args.generators]).to(dev)
    latents = latent_fill(latents, small.to(latents.dtype), fill, noise.to(latents.dtype))
    masked = encode_images(pipe, pixels * (mask < 0.5)) if is_inpainting_model(pipe) else latents
    return pipe(
        **_common(args, progress, 0),
        image=latents.to(dtype),
        mask_image=mask.to(dtype),
        masked_image_latents=masked.to(dtype),
        strength=pass_strength(args.steps, strength),
        **({"denoising_end": end} if end is not None else {}),
    ).images


def pil_to_tensor(images: list, signed: bool = True) -> Any:
    """PIL images -> (B, C, H, W) float32, in [-1, 1] (or [0, 1] unsigned)."""
    import numpy as np
    import torch

    arr = np.stack([np.asarray(img, np.float32) for img in images])  # (B, H, W[, C])
    x = torch.from_numpy(arr if arr.ndim == 4 else arr[..., None]).permute(0, 3, 1, 2) / 255.0
    return x * 2.0 - 1.0 if signed else x


def encode_images(pipe: Any, pixels: Any) -> Any:
    """(B, 3, H, W) in [-1, 1] -> scaled latents: the mean of the VAE's posterior, so that the same image gives the
    same latents whatever the seed (the inverse of sdplay.run.decode_latents)."""
    vae = pipe.vae
    latents = vae.encode(pixels.to(execution_device(pipe), vae.dtype)).latent_dist.mode()
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = latents.new_tensor(mean).view(1, -1, 1, 1)
        std = latents.new_tensor(std).view(1, -1, 1, 1)
        return (latents - mean) * vae.config.scaling_factor / std
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor
