"""Choosing a sampler for a device name, and the live figures shown by `sdplay devices`."""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import threading
from typing import Any

from sdplay.errors import DeviceNotAvailable, SdplayError
from sdplay.telemetry.host import HostSampler
from sdplay.telemetry.sample import Sampler

log = logging.getLogger(__name__)

KINDS = ("cuda", "xpu", "mps", "cpu")
LIVE_KEYS = (
    "device source utilization memory_used_mib memory_free_mib memory_total_mib memory_utilization "
    "power_w temperature_c error"
)
_shared: dict[str, Sampler] = {}
_shared_lock = threading.Lock()
_NO_XPU_SMI = DeviceNotAvailable(
    "xpu-smi is not installed.", hint="Install Intel XPU Manager for utilisation and power, or use another device."
)


def parse_device(device: object) -> tuple[str, int | None]:
    """'cuda' -> ('cuda', 0), 'xpu:1' -> ('xpu', 1), 'mps' -> ('mps', None), 'cpu' -> ('cpu', None)."""
    kind, _, index = str(device).strip().lower().partition(":")
    if kind not in KINDS or (index and not index.isdigit()):
        raise DeviceNotAvailable(
            f"Unknown device {device!r}.", hint="Use cuda:N, xpu:N, mps or cpu (or an accelerator index such as 0)."
        )
    if kind in ("mps", "cpu"):
        return kind, None
    return kind, int(index or 0)


def device_name(device: object) -> str:
    """The canonical spelling: 'cuda' -> 'cuda:0', 'CPU' -> 'cpu'."""
    kind, index = parse_device(device)
    return kind if index is None else f"{kind}:{index}"


def default_device() -> str:
    """The first accelerator here (NVIDIA, Intel, Apple), else 'cpu'; creates no GPU context."""
    if _nvml_gpu_count() > 0:
        return "cuda:0"
    if shutil.which("xpu-smi"):
        return "xpu:0"
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda:0"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu:0"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(spec: str | int | None) -> str:
    """A device name from user input: None/'auto' -> the default, '1' -> index 1 of the first accelerator kind."""
    if spec is None or str(spec).strip().lower() in ("", "auto"):
        return default_device()
    if str(spec).strip().isdigit():
        first = default_device()
        if first in ("cpu", "mps"):
            raise DeviceNotAvailable(
                f"Device index {spec} names an accelerator, and this machine has no CUDA or XPU device.",
                hint="Use -d cpu" + (" or -d mps." if first == "mps" else "."),
            )
        return f"{first.split(':')[0]}:{int(spec)}"
    return device_name(spec)


def sampler_for(device: str, *, interval: float = 1.0) -> Sampler:
    """A new sampler for `device`; a missing vendor tool falls back (one warning) or raises DeviceNotAvailable."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return HostSampler()
    if kind == "mps":
        return _torch_sampler("mps", 0)
    if kind == "cuda":
        from sdplay.telemetry.nvidia import NvmlSampler

        try:
            return NvmlSampler(index or 0)
        except DeviceNotAvailable as exc:
            return _fallback(kind, index or 0, exc)
    from sdplay.telemetry.intel import XpuSmiSampler

    if shutil.which("xpu-smi") is None:
        return _fallback(kind, index or 0, _NO_XPU_SMI)
    return XpuSmiSampler(index or 0, interval_s=interval)


def shared_sampler(device: str) -> Sampler:
    """One sampler per device for this process (one NVML handle, one xpu-smi process), closed at exit."""
    name = device_name(device)
    with _shared_lock:
        if name not in _shared:
            if not _shared:
                atexit.register(close_shared_samplers)
            _shared[name] = sampler_for(name)
        return _shared[name]


def close_shared_samplers() -> None:
    """Close every sampler `shared_sampler` made."""
    with _shared_lock:
        for sampler in _shared.values():
            sampler.close()
        _shared.clear()


def live_figures(device: str) -> dict[str, Any]:
    """Memory used/free/total (MiB) and utilisation (%) of `device` now; an 'error' text instead of raising."""
    figures: dict[str, Any] = dict.fromkeys(LIVE_KEYS.split())
    figures["device"] = str(device)
    try:
        sample = shared_sampler(device).sample()
    except SdplayError as exc:
        figures["error"] = str(exc)
        return figures
    figures.update({k: v for k, v in sample.to_dict().items() if k in figures}, device=sample.device)
    if sample.memory_used_mib is not None and sample.memory_total_mib is not None:
        figures["memory_free_mib"] = sample.memory_total_mib - sample.memory_used_mib
    return figures


def _fallback(kind: str, index: int, reason: DeviceNotAvailable) -> Sampler:
    """torch's own memory figures when the vendor tool is missing; raise `reason` if torch cannot see it either."""
    try:
        sampler = _torch_sampler(kind, index)
    except DeviceNotAvailable as exc:
        raise DeviceNotAvailable(f"{kind}:{index}: {reason.message} {exc.message}", hint=reason.hint) from None
    log.warning("%s: %s Showing torch's memory figures only (no utilisation).", sampler.device, reason)
    return sampler


def _torch_sampler(kind: str, index: int) -> Sampler:
    if importlib.util.find_spec("torch") is None:
        raise DeviceNotAvailable(f"{kind} telemetry without its vendor tool needs torch.", hint="pip install torch")
    from sdplay.telemetry.torchmem import TorchMemorySampler

    return TorchMemorySampler(kind, index)


def _nvml_gpu_count() -> int:
    """NVIDIA GPUs NVML sees, 0 without driver or bindings, or when CUDA_VISIBLE_DEVICES hides them all."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0
    finally:
        pynvml.nvmlShutdown()
