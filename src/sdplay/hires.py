"""Hires fix (A1111's `enable_hr`): the size of the second pass and the upscalers, latent or in pixels."""

from __future__ import annotations

import math
from typing import Any

from sdplay.errors import InvalidRequest

# A1111's latent upscaler names -> (torch interpolate mode, antialias).
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Upscalers working on decoded pixels (Pillow filters); "None" resizes without smoothing, as A1111's "None".
PIXEL_UPSCALERS: dict[str, str] = {"Lanczos": "LANCZOS", "Nearest": "NEAREST", "None": "NEAREST"}


def upscaler_names() -> list[str]:
    return [*LATENT_UPSCALERS, *PIXEL_UPSCALERS]


def check_upscaler(name: Any) -> str:
    if name not in LATENT_UPSCALERS and name not in PIXEL_UPSCALERS:
        raise InvalidRequest(
            f"Unknown hires upscaler {name!r}.",
            field="hr_upscaler",
            hint=f"Choose one of: {', '.join(upscaler_names())}.",
        )
    return name


def target_size(width: int, height: int, hires: Any, max_pixels: int, max_side: int) -> tuple[int, int]:
    """The second pass's size: hr_resize_x/y if given (one of them keeps the aspect), else width/height x scale,
    rounded to multiples of 8 (`hires`: a types.HiresFix); over the limits, the error names the largest scale
    that fits."""
    if hires.width and hires.height:
        w, h = hires.width, hires.height
    elif hires.width or hires.height:
        ratio = (hires.width / width) if hires.width else (hires.height / height)
        w, h = _round8(width * ratio), _round8(height * ratio)
    else:
        w, h = _round8(width * hires.scale), _round8(height * hires.scale)
    if w * h > max_pixels or max(w, h) > max_side:
        fits = min(math.sqrt(max_pixels / (width * height)), max_side / max(width, height))
        fits = math.floor(fits * 100) / 100
        raise InvalidRequest(
            f"Hires fix to {w}x{h} exceeds the limit of {max_pixels:,} pixels ({max_side} per side).",
            field="hr_scale",
            hint=f"The largest hires scale that fits {width}x{height} is {fits:g}.",
        )
    return w, h


def _round8(x: float) -> int:
    return max(8, round(x / 8) * 8)


def upscale_latents(latents: Any, size: tuple[int, int], name: str) -> Any:
    """(B, C, h, w) latents -> (B, C, H, W) with the interpolation A1111's latent upscaler of that name uses."""
    import torch.nn.functional as F

    mode, antialias = LATENT_UPSCALERS[name]
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    return F.interpolate(latents.float(), size=size, mode=mode, **kwargs).to(latents.dtype)


def upscale_pixels(images: list, size: tuple[int, int], name: str) -> list:
    """PIL images -> resized with the Pillow filter of that upscaler."""
    from PIL import Image

    resample = getattr(Image.Resampling, PIXEL_UPSCALERS[name])
    return [img.resize(size, resample) for img in images]
