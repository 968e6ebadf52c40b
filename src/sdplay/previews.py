"""Cheap live previews: a linear map from latent channels to RGB, one small matrix per model family."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdplay.families import FAMILIES, SD1

if TYPE_CHECKING:
    import torch
    from PIL import Image

# The latent -> RGB factors (and bias) of each family, keyed by the family a model reports.
LATENT_RGB_FACTORS: dict[str, tuple[tuple[float, float, float], ...]] = {f.family.value: f.latent_rgb for f in FAMILIES}
LATENT_RGB_BIAS: dict[str, tuple[float, float, float]] = {f.family.value: f.latent_rgb_bias for f in FAMILIES}
_SD1 = SD1.latent_rgb


def latents_to_rgb(latents: torch.Tensor, family: str, index: int = 0) -> torch.Tensor:
    """Approximate RGB of one latent as a (H, W, 3) uint8 tensor; `latents` is (4, h, w) or (B, 4, h, w)."""
    import torch

    factors = LATENT_RGB_FACTORS.get(family, _SD1)
    bias = LATENT_RGB_BIAS.get(family, (0.0, 0.0, 0.0))
    x = latents.detach()
    if x.dim() == 4:
        x = x[min(index, x.shape[0] - 1)]
    if x.dim() != 3 or x.shape[0] != 4:
        raise ValueError(f"expected latents of shape (4, h, w) or (B, 4, h, w), got {tuple(latents.shape)}")
    x = x.to(device="cpu", dtype=torch.float32).permute(1, 2, 0)  # (h, w, 4)
    rgb = x @ torch.tensor(factors) + torch.tensor(bias)  # (h, w, 3) in about [-1, 1]
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def latents_to_preview(latents: torch.Tensor, family: str, index: int = 0, scale: int = 8) -> Image.Image:
    """A preview image of one latent, upscaled `scale` times (8 gives roughly the final image size)."""
    from PIL import Image

    rgb = latents_to_rgb(latents, family, index)
    image = Image.fromarray(rgb.numpy())
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    return image
