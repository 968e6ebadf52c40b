"""The optimisation step: visit every module of a pipeline before inference and record each choice."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from sdplay.devices import DeviceInfo
from sdplay.families import FamilySpec

log = logging.getLogger(__name__)

COMPUTE_MODULES = ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker")


def optimize_pipeline(pipe: Any, device: DeviceInfo, dtype, opts, family: FamilySpec) -> dict[str, Any]:
    """Eval mode, dtype, device, channels-last, SDPA, IPEX and memory options on every nn.Module."""
    import torch

    choices: dict[str, Any] = {"device": device.id, "dtype": str(dtype).removeprefix("torch.")}
    # 1. Every nn.Module of the pipeline, as the seed's _optimize_pipeline visits them.
    modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    # The family's VAE dtype rule (SDXL's VAE overflows in fp16; SD 1.x/2.x VAEs decode in fp16 as diffusers does).
    force_upcast = bool(getattr(pipe.vae.config, "force_upcast", False))
    vae_fp32 = dtype != torch.float32 and family.vae_fp32_if_upcast and force_upcast
    for name, module in modules.items():
        module.eval().requires_grad_(False)
        target = torch.float32 if name == "vae" and vae_fp32 else dtype
        if getattr(module, "dtype", target) != target:
            module.to(dtype=target)
    choices["vae_dtype"] = "float32 (this VAE makes NaNs in fp16)" if vae_fp32 else choices["dtype"]
    # 2. Safety checker: run as diffusers does unless turned off.
    choices["safety_checker"] = _safety_checker(pipe, opts)
    # 3. Attention through PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels).
    choices["attention"] = _use_sdpa(pipe)
    # 4. Memory layout: channels-last for the UNet where it pays (CUDA and XPU convolutions); the VAE stays
    #    contiguous (its GroupNorm and upsampling at full resolution measured slower channels-last on an H100).
    channels_last = opts.channels_last if opts.channels_last is not None else device.kind in ("cuda", "xpu")
    if channels_last:
        modules["unet"].to(memory_format=torch.channels_last)
    choices["channels_last"] = bool(channels_last)
    # 5. Intel Extension for PyTorch, only when installed (native torch.xpu otherwise).
    choices["ipex"] = _ipex(pipe, modules, device, dtype)
    # 6. Memory options, then placement.
    choices |= _memory_options(pipe, opts)
    if opts.cpu_offload and device.kind != "cpu":
        pipe.enable_model_cpu_offload(device=device.id)
        choices["placement"] = "model CPU offload"
    else:
        pipe.to(device.id)
        choices["placement"] = device.id
    pipe.set_progress_bar_config(disable=True)
    # 7. The compiled fast path (CUDA graphs, torch.compile) where the device supports it.
    choices["fast_path"] = _fast_path(pipe, device, opts, family.family)
    return choices


def _fast_path(pipe: Any, device: DeviceInfo, opts, family) -> Any:
    if opts.fast is False or opts.cpu_offload or importlib.util.find_spec("sdplay.accel.fastpath") is None:
        return "off"
    from sdplay.accel.fastpath import apply_fast_path

    return apply_fast_path(pipe, device, opts, family)


def _safety_checker(pipe: Any, opts) -> str:
    if getattr(pipe, "safety_checker", None) is None:
        return "none in this model"
    if not opts.safety_checker:
        pipe.safety_checker = None
        return "off (turned off by the user)"
    return "on"


def _use_sdpa(pipe: Any) -> str:
    import torch.nn.functional as F

    if not hasattr(F, "scaled_dot_product_attention"):
        return "classic"
    if getattr(pipe, "sdplay_attention", None):  # a pipeline of sdplay.light: SDPA throughout, nothing to set
        return pipe.sdplay_attention
    from diffusers.models.attention_processor import AttnProcessor2_0

    for name in ("unet", "vae"):
        getattr(pipe, name).set_attn_processor(AttnProcessor2_0())
    return "sdpa"


def _ipex(pipe: Any, modules: dict, device: DeviceInfo, dtype) -> str:
    if device.kind not in ("xpu", "cpu") or importlib.util.find_spec("intel_extension_for_pytorch") is None:
        return "not installed" if device.kind in ("xpu", "cpu") else "not applicable"
    import intel_extension_for_pytorch as ipex

    for name, module in modules.items():
        if name in COMPUTE_MODULES:
            setattr(pipe, name, ipex.optimize(module.eval(), dtype=dtype, inplace=True))
    return f"ipex.optimize {ipex.__version__}"


def _memory_options(pipe: Any, opts) -> dict[str, Any]:
    if opts.attention_slicing:
        pipe.enable_attention_slicing()
    if opts.vae_slicing:
        pipe.vae.enable_slicing()
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    return {
        "attention_slicing": opts.attention_slicing,
        "vae_slicing": opts.vae_slicing,
        "vae_tiling": opts.vae_tiling,
    }
