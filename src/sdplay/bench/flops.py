"""FLOP counts of the seed models and peak rates of common GPUs, for model FLOP utilisation (MFU)."""

from __future__ import annotations

from typing import Any

from sdplay.families import FAMILIES, for_architecture

# One UNet forward at batch 1 (torch FlopCounterMode, diffusers 0.42), keyed by family: (latent side, TFLOP);
# one VAE decode at batch 1: (image side, TFLOP). The figures live in each family's spec.
UNET_TFLOP = {f.family.value: for_architecture(f.family).unet_tflop for f in FAMILIES if f.unet_tflop}
VAE_TFLOP = {f.family.value: for_architecture(f.family).vae_tflop for f in FAMILIES if f.vae_tflop}
# Dense tensor-core peaks from the datasheets, TFLOP/s: (name fragment, fp16/bf16, tf32).
PEAKS = (
    ("H200", 989.4, 494.7),
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.5, 417.5),
    ("H100", 989.4, 494.7),
    ("A100", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
    ("RTX 4090", 165.2, 82.6),
)


def table_tflop(family: str, width: int, height: int) -> tuple[float, float] | None:
    """(UNet forward, VAE decode) TFLOP at batch 1 from the table, only at the model's native size."""
    if family not in UNET_TFLOP:
        return None
    side, unet = UNET_TFLOP[family]
    vae_side, vae = VAE_TFLOP[family]
    if (width, height) != (vae_side, vae_side) or side * 8 != vae_side:
        return None
    return unet, vae


def count_tflop(pipe: Any, width: int, height: int) -> tuple[float, float]:
    """(UNet forward, VAE decode) TFLOP at batch 1, counted by running both once under FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sdplay.bench.probes import unet_inputs

    args, kwargs = unet_inputs(pipe, 1, width, height, host_timestep=False)
    with torch.inference_mode(), FlopCounterMode(display=False) as unet_count:
        pipe.unet(*args, **kwargs)
    vae = pipe.vae
    z = torch.randn(1, vae.config.latent_channels, height // 8, width // 8, device=vae.device, dtype=vae.dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as vae_count:
        vae.decode(z, return_dict=False)
    return unet_count.get_total_flops() / 1e12, vae_count.get_total_flops() / 1e12


def image_tflop(unet: float, vae: float, steps: int, guided: bool) -> float:
    """TFLOP to make one image: every step runs the UNet on 2 latents when guided, then one decode."""
    return steps * unet * (2 if guided else 1) + vae


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The datasheet dense peak for this GPU and dtype (tf32 for float32), or None if unknown."""
    for fragment, half, tf32 in PEAKS:
        if fragment.lower() in device_name.lower():
            return tf32 if dtype == "float32" else half
    return None


def mfu(tflop: float, seconds: float, peak: float | None) -> float | None:
    """Achieved FLOP rate over peak, as a fraction."""
    if not peak or seconds <= 0:
        return None
    return tflop / seconds / peak
