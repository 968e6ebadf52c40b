"""Cheap live previews: a linear map from latent channels to RGB, one small matrix per model family."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

# Rows are the 4 latent channels, columns R, G, B: the "latent2rgb" factors of ComfyUI's latent previews.
# SD 1.x and 2.x share one VAE, so they share one matrix; SDXL's VAE has its own, plus a bias.
_SD1 = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
LATENT_RGB_FACTORS: dict[str, tuple[tuple[float, float, float], ...]] = {"sd1": _SD1, "sd2": _SD1, "sdxl": _SDXL}
LATENT_RGB_BIAS: dict[str, tuple[float, float, float]] = {
    "sd1": (0.0, 0.0, 0.0),
    "sd2": (0.0, 0.0, 0.0),
    "sdxl": (0.1084, -0.0175, -0.0011),
}


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
