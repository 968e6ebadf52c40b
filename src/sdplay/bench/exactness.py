"""How far the fast path strays from eager: relative error of module outputs, PSNR of same-seed images."""

from __future__ import annotations

import math
from typing import Any

from sdplay.bench.probes import unet_inputs
from sdplay.bench.variants import Variant, Workload


def rel_error(out: Any, ref: Any) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN if either has non-finite values)."""
    out, ref = out.double(), ref.double()
    if not (out.isfinite().all() and ref.isfinite().all()):
        return float("nan")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two 8-bit images (inf when identical)."""
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def compare(ref: Variant, new: Variant, work: Workload, seed: int, trials: int = 3, modules: bool = True) -> dict:
    """UNet (two shapes), VAE decode and text encoder errors on fresh random inputs, then same-seed images."""
    out: dict[str, Any] = {}
    if modules:
        shapes = [(2, work.width, work.height), (2, work.width, _other_side(work.height))]
        out["unet"] = [_unet_error(ref, new, *shape, trials) for shape in shapes]
        out["vae"] = _vae_error(ref, new, work, trials)
        out["text_encoder"] = _text_error(ref, new, trials)
    images_ref, images_new = ref.run(1, seed), new.run(1, seed)
    out["image_psnr_db"] = psnr(images_ref[0], images_new[0])
    out["image_max_abs_diff"] = _max_diff(images_ref[0], images_new[0])
    return out


def _other_side(side: int) -> int:
    return side - 64 if side > 128 else side + 64


def _unet_error(ref: Variant, new: Variant, batch: int, width: int, height: int, trials: int) -> dict[str, Any]:
    import torch

    errors = []
    with torch.inference_mode():
        for _ in range(trials):
            args, kwargs = unet_inputs(ref.pipe, batch, width, height, host_timestep=False)
            expected = ref.pipe.unet(*args, **kwargs)[0]
            t = args[1].cpu() if new.host_timestep else args[1]
            got = new.pipe.unet(args[0], t, **kwargs)[0]
            errors.append(rel_error(got, expected))
    return {"batch": batch, "width": width, "height": height, "rel_error": max(errors), "trials": errors}


def _vae_error(ref: Variant, new: Variant, work: Workload, trials: int) -> dict[str, Any]:
    import torch

    vae = ref.pipe.vae
    errors = []
    with torch.inference_mode():
        for _ in range(trials):
            z = torch.randn(1, vae.config.latent_channels, work.height // 8, work.width // 8, device=vae.device)
            expected = vae.decode(z.to(vae.dtype), return_dict=False)[0]
            got = new.pipe.vae.decode(z.to(new.pipe.vae.dtype), return_dict=False)[0]
            errors.append(rel_error(got, expected))
    return {"rel_error": max(errors), "trials": errors}


def _text_error(ref: Variant, new: Variant, trials: int) -> dict[str, Any]:
    import torch

    enc = ref.pipe.text_encoder
    errors = []
    with torch.inference_mode():
        for _ in range(trials):
            ids = torch.randint(1, enc.config.vocab_size - 1, (1, 77), device=enc.device)
            expected = enc(ids)[0]
            got = new.pipe.text_encoder(ids)[0]
            errors.append(rel_error(got, expected))
    return {"rel_error": max(errors), "trials": errors}


def _max_diff(a: Any, b: Any) -> int:
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
