"""The light runtime: small SD 1.x-layout models (sdplay's embedded model) run on the CPU without importing diffusers
or transformers, so that a one-shot `sdplay generate` answers in about the time torch takes to import.

It covers plain text-to-image with DPM++ 2M (uniform or Karras schedule) in float32 on the CPU: prompts with A1111
emphasis, BREAK, prompt editing and clip skip, any size, batches. The networks, the scheduler and the denoising
loop repeat diffusers' and transformers' operations one for one, so images and metadata are the same as the full
pipeline's, bit for bit (tests/unit/test_light.py compares them). Anything else (other samplers, image inputs, hires
fix, LoRAs, memory options, other devices or dtypes, folders of another layout) runs on the full pipeline.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdplay.plan import Plan

SAMPLERS = ("DPM++ 2M", "DPM++ 2M Karras")


def covers(plan: Plan, options: Any) -> bool:
    """Whether the light runtime runs `plan` with these LoadOptions exactly as the full pipeline would."""
    from sdplay.light.folder import check

    req, folder = plan.request, plan.model.weights_dir
    return (
        plan.device.kind == "cpu" and plan.dtype == "float32" and plan.task == "txt2img" and req.hires is None
        and not req.refiner and not plan.loras and plan.sampler.name in SAMPLERS
        and not (options.random_weights or options.attention_slicing or options.vae_slicing or options.vae_tiling
                 or options.cpu_offload or options.channels_last or options.fast)
        and folder is not None and folder.is_dir() and check(folder) is None
        and importlib.util.find_spec("intel_extension_for_pytorch") is None  # the full path would ipex.optimize
    )  # fmt: skip


def load(folder: Any, dtype: str = "float32") -> Any:
    """The folder's pipeline on the light modules (sdplay.light.folder.check must have passed)."""
    import torch

    from sdplay.light.pipeline import LightPipeline

    return LightPipeline.from_folder(folder, getattr(torch, dtype))
