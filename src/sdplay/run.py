"""One UNet batch, as numbered steps: encode text, draw noise, denoise, decode, check."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdplay import cancel
from sdplay.devices import empty_cache, peak_memory, reset_peak_memory, synchronize
from sdplay.errors import DeviceOutOfMemory
from sdplay.prompts import encode, execution_device
from sdplay.samplers import make_scheduler
from sdplay.types import GenerationRequest, StepCallback, StepInfo

if TYPE_CHECKING:
    from sdplay.loading import LoadedModel
    from sdplay.plan import Plan


@dataclass
class BatchOutput:
    """Images of one batch and how long each phase took."""

    images: list[Any]
    nsfw: list[bool] | None
    text_encoding: float
    denoising: float
    decoding: float
    safety_check: float
    peak_memory: int | None
    scheduler: str
    chunks: int
    warnings: list[str] = field(default_factory=list)


def run_batch(
    loaded: LoadedModel, plan: Plan, items: list, on_step: StepCallback | None, index: int, count: int
) -> BatchOutput:
    """Generate the images of `items` (prompt, negative, seed each) with the settings of `plan`."""
    import torch

    req = plan.request
    try:
        with torch.inference_mode():
            return _run(loaded, plan, items, on_step, index, count)
    except torch.OutOfMemoryError as exc:
        empty_cache(loaded.device)
        raise DeviceOutOfMemory(
            f"{loaded.device.id} ran out of memory generating {len(items)} image(s) of {req.width}x{req.height}.",
            hint=_oom_hint(req, len(items)),
        ) from exc


def _run(loaded: LoadedModel, plan: Plan, items: list, on_step, index: int, count: int) -> BatchOutput:
    import torch

    req = plan.request
    pipe, dev = loaded.pipe, loaded.device
    cancel.guard(pipe)  # a stop takes effect between two UNet blocks, not only between steps
    clock = _Clock(dev)
    reset_peak_memory(dev)
    # 1. A fresh scheduler for this batch: no step state is shared between requests.
    pipe.scheduler = make_scheduler(plan.sampler.spec, loaded.scheduler_config, [i.seed for i in items])
    if getattr(pipe, "sdplay_fast", None) is not None:  # the fast path keeps step arithmetic off the device
        pipe.sdplay_fast.prepare_scheduler(pipe.scheduler)
    # 2. Encode the prompts (chunked beyond 75 tokens, A1111 emphasis, one conditioning per range of steps).
    emb = encode(pipe, loaded.family_spec, [i.prompt for i in items], [i.negative for i in items], req.steps,
                 getattr(req, "clip_skip", None) or 1)  # fmt: skip
    t_text = clock.lap()
    # 3. Initial noise from CPU generators, one per image: same seed, same image on any device.
    generators = [torch.Generator("cpu").manual_seed(i.seed) for i in items]
    shape = (pipe.unet.config.in_channels, req.height // pipe.vae_scale_factor, req.width // pipe.vae_scale_factor)
    latents = torch.stack([torch.randn(shape, generator=g) for g in generators])  # (B, C, H/8, W/8)
    # 4. Denoise, reporting every step (the callback may raise Cancelled).
    started = time.perf_counter()

    def step_end(p, i, _t, kwargs):
        if on_step is not None:
            elapsed = time.perf_counter() - started
            on_step(StepInfo(i + 1, p.num_timesteps, index, count, elapsed, kwargs["latents"], loaded.family.value))
        if emb.schedule:  # prompt editing / alternation: the next step's conditioning
            kwargs |= emb.step_inputs(i + 1, p.do_classifier_free_guidance)
        return kwargs

    latents = pipe(
        **emb.pipeline_kwargs(),
        height=req.height,
        width=req.width,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance,
        generator=generators,
        latents=latents.to(execution_device(pipe), emb.prompt.dtype),
        output_type="latent",
        callback_on_step_end=step_end,
        callback_on_step_end_tensor_inputs=_step_tensors(emb, loaded.family),
    ).images
    t_denoise = clock.lap()
    # 5. Decode with the VAE (fp32 where the model needs it).
    image = decode_latents(pipe, latents)
    t_decode = clock.lap()
    # 6. Safety checker where the model ships one, then PIL images.
    images, nsfw = _postprocess(pipe, image, emb.prompt.dtype)
    t_safety = clock.lap()
    warnings = ["non-finite values in the decoded image (black output)"] if not torch.isfinite(image).all() else []
    return BatchOutput(images, nsfw, t_text, t_denoise, t_decode, t_safety, peak_memory(dev),
                       type(pipe.scheduler).__name__, emb.chunks, warnings)  # fmt: skip


def _step_tensors(emb: Any, family: Any) -> list[str]:
    """The in-loop tensors the step callback sees: the conditioning too when it changes over the steps."""
    if not emb.schedule:
        return ["latents"]
    return ["latents", "prompt_embeds"] + (["add_text_embeds"] if emb.pooled is not None else [])


def decode_latents(pipe: Any, latents: Any) -> Any:
    """Latents -> image tensor in [-1, 1], undoing the VAE's scaling (and shift, where it has one)."""
    vae = pipe.vae
    latents = latents.to(vae.dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = latents.new_tensor(mean).view(1, -1, 1, 1)
        std = latents.new_tensor(std).view(1, -1, 1, 1)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    return vae.decode(latents, return_dict=False)[0]


def _postprocess(pipe: Any, image: Any, dtype) -> tuple[list[Any], list[bool] | None]:
    nsfw = None
    if getattr(pipe, "safety_checker", None) is not None:
        image, nsfw = pipe.run_safety_checker(image, execution_device(pipe), dtype)
        nsfw = [bool(x) for x in nsfw]
    denormalize = [True] * image.shape[0] if nsfw is None else [not x for x in nsfw]
    return to_pil(image, denormalize), nsfw


def to_pil(image: Any, denormalize: list[bool]) -> list[Any]:
    """(B, 3, H, W) in [-1, 1] -> PIL images, as diffusers' postprocess computes them (bit for bit), but made 8-bit
    on the device: only a quarter of the bytes cross to the host, and no float arrays are built there."""
    import torch
    from PIL import Image

    x = image.float()
    scale = torch.tensor(denormalize, device=x.device).view(-1, 1, 1, 1)
    x = torch.where(scale, (x * 0.5 + 0.5).clamp(0, 1), x)  # flagged images stay as the checker left them
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def _oom_hint(req: GenerationRequest, n: int) -> str:
    hints = []
    if n > 1:
        hints.append("generate fewer images at once (batch size 1)")
    if req.width * req.height > 512 * 512:
        w, h = max(512, req.width * 3 // 4 // 64 * 64), max(512, req.height * 3 // 4 // 64 * 64)
        hints.append(f"use a smaller size such as {w}x{h}")
    hints.append("turn on --attention-slicing, --vae-tiling or --cpu-offload")
    return "To fit: " + "; or ".join(hints) + "."


class _Clock:
    """Host timer that waits for the device before each reading."""

    def __init__(self, device):
        self.device = device
        synchronize(device)
        self.last = time.perf_counter()

    def lap(self) -> float:
        synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
