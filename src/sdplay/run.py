"""One UNet batch, as numbered steps: encode text, denoise as the task asks (hires pass too), decode, check."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sdplay import cancel, passes
from sdplay.devices import empty_cache, peak_memory, reset_peak_memory, synchronize
from sdplay.errors import DeviceOutOfMemory
from sdplay.hires import LATENT_UPSCALERS, target_size, upscale_latents, upscale_pixels
from sdplay.passes import PassArgs
from sdplay.prompts import Inversions, encode, execution_device
from sdplay.types import DEFAULT_STRENGTH, MAX_PIXELS, MAX_SIDE, GenerationRequest, StepCallback

if TYPE_CHECKING:
    from sdplay.loading import LoadedModel
    from sdplay.masking import InpaintInput
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
    loaded: LoadedModel,
    plan: Plan,
    items: list,
    on_step: StepCallback | None,
    index: int,
    count: int,
    inputs: list[InpaintInput] | None = None,
    refiner: LoadedModel | None = None,
    inversions: Inversions | None = None,
) -> BatchOutput:
    """Generate the images of `items` (prompt, negative, seed each) with the settings of `plan`; `inputs` are the
    prepared images of image-to-image and inpainting, one per item; `inversions` the embeddings' vectors."""
    import torch

    req = plan.request
    try:
        with torch.inference_mode():
            return _run(loaded, plan, items, on_step, index, count, inputs, refiner, inversions)
    except torch.OutOfMemoryError as exc:
        empty_cache(loaded.device)
        raise DeviceOutOfMemory(
            f"{loaded.device.id} ran out of memory generating {len(items)} image(s) of {req.width}x{req.height}.",
            hint=_oom_hint(req, len(items)),
        ) from exc


def _run(loaded: LoadedModel, plan: Plan, items: list, on_step, index, count, inputs, refiner, inv) -> BatchOutput:
    import torch

    req = plan.request
    pipe, dev = loaded.pipe, loaded.device
    cancel.guard(pipe)  # a stop takes effect between two UNet blocks, not only between steps
    clock = _Clock(dev)
    reset_peak_memory(dev)
    # 1. Encode the prompts (chunked beyond 75 tokens, A1111 emphasis, one conditioning per range of steps).
    emb = encode(pipe, loaded.family_spec, [i.prompt for i in items], [i.negative for i in items], req.steps,
                 req.clip_skip or 1, inv)  # fmt: skip
    t_text = clock.lap()
    # 2. One CPU generator per image (same seed, same image on any device); a fresh scheduler for every pass.
    seeds = [i.seed for i in items]
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    args = PassArgs(emb, generators, plan.sampler.spec, req.steps, req.guidance, req.width, req.height, seeds)
    progress = passes.Progress(on_step, index, count, loaded.family.value, _planned_steps(req))
    # 3. Denoise as the task asks (the step callback may raise Cancelled); the refiner takes the last steps.
    if refiner is not None:
        handoff = _handoff(req)
        latents = _denoise(loaded, req, args, progress, inputs, end=handoff)
        prompts, negatives = [i.prompt for i in items], [i.negative for i in items]
        latents = passes.refine(refiner, args, progress, latents, prompts, negatives, handoff)
        pipe = refiner.pipe  # decode with the refiner's VAE
    else:
        latents = _denoise(loaded, req, args, progress, inputs)
    # 4. Hires fix: upscale, then a second image-to-image pass at the larger size.
    if req.hires is not None:
        latents = _hires(loaded, req, args, progress, latents)
    t_denoise = clock.lap()
    # 5. Decode with the VAE (fp32 where the model needs it).
    image = decode_latents(pipe, latents)
    t_decode = clock.lap()
    # 6. Safety checker where the model ships one, then PIL images, pasted back into the originals.
    images, nsfw = _postprocess(pipe, image, emb.prompt.dtype)
    if inputs is not None:
        images = [img if nsfw and nsfw[k] else inputs[k].finish(img) for k, img in enumerate(images)]
    t_safety = clock.lap()
    warnings = ["non-finite values in the decoded image (black output)"] if not torch.isfinite(image).all() else []
    return BatchOutput(images, nsfw, t_text, t_denoise, t_decode, t_safety, peak_memory(dev),
                       progress.scheduler, emb.chunks, warnings)  # fmt: skip


def _handoff(req: GenerationRequest) -> float:
    strength = DEFAULT_STRENGTH if req.strength is None else req.strength
    return passes.refiner_handoff(req.task, passes.pass_strength(req.steps, strength), req.refiner_switch_at)


def _denoise(loaded: LoadedModel, req: GenerationRequest, args: PassArgs, progress, inputs, end=None) -> Any:
    """The first pass as the task asks; `end`: stop at that fraction of the schedule (a refiner finishes)."""
    strength = DEFAULT_STRENGTH if req.strength is None else req.strength
    if req.task == "inpaint" or (req.task == "txt2img" and passes.is_inpainting_model(loaded.pipe)):
        if inputs is None:  # an inpainting UNet drawing from nothing: a blank image, all of it masked
            images, masks, strength = _blank(req, len(args.generators)), None, 1.0
        else:
            images, masks = [i.init for i in inputs], [i.mask for i in inputs]
        masks = masks or [_white(req) for _ in images]
        return passes.inpaint(loaded, args, progress, images, masks, strength, _latent_fill(req.inpaint_fill), end)
    if req.task == "img2img":
        pipe = loaded.pipe
        init = passes.encode_images(pipe, passes.pil_to_tensor([i.init for i in inputs]).to(execution_device(pipe)))
        return passes.img2img(loaded, args, progress, init, strength, end=end)
    return passes.txt2img(loaded, args, progress, end=end)


def _hires(loaded: LoadedModel, req: GenerationRequest, args: PassArgs, progress, latents) -> Any:
    """Upscale the first pass (in latent space, or decoded, resized with Pillow and encoded again), then
    denoise it again at the larger size from `hires.strength`."""
    hr = req.hires
    width, height = target_size(req.width, req.height, hr, MAX_PIXELS, MAX_SIDE)
    pipe = loaded.pipe
    if hr.upscaler in LATENT_UPSCALERS:
        scale = pipe.vae_scale_factor
        latents = upscale_latents(latents, (height // scale, width // scale), hr.upscaler)
    else:
        images = to_pil(decode_latents(pipe, latents), [True] * latents.shape[0])
        pixels = passes.pil_to_tensor(upscale_pixels(images, (width, height), hr.upscaler))
        latents = passes.encode_images(pipe, pixels.to(execution_device(pipe)))
    second = replace(args, steps=hr.steps or args.steps, width=width, height=height)
    offset = progress.done
    return passes.img2img(loaded, second, progress, latents, hr.strength, offset=offset)


def _planned_steps(req: GenerationRequest) -> int:
    strength = DEFAULT_STRENGTH if req.strength is None else req.strength
    first = req.steps if req.task == "txt2img" else passes.pass_steps(req.steps, strength)
    if req.hires is None:
        return first
    return first + passes.pass_steps(req.hires.steps or req.steps, req.hires.strength)


def _latent_fill(fill: str) -> str:
    from sdplay.masking import fill_mode

    return fill_mode(fill)


def _blank(req: GenerationRequest, n: int) -> list:
    from PIL import Image

    return [Image.new("RGB", (req.width, req.height), (127, 127, 127)) for _ in range(n)]


def _white(req: GenerationRequest) -> Any:
    from PIL import Image

    return Image.new("L", (req.width, req.height), 255)


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
