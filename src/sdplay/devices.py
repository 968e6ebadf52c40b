"""Accelerator discovery (CUDA, Intel XPU, Apple MPS, CPU) and the dtype policy. Nothing runs at import."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from sdplay.errors import DeviceNotAvailable, InvalidRequest

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "half": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}  # fmt: skip
DEFAULT_DTYPE = {"cuda": "float16", "xpu": "bfloat16", "mps": "float16", "cpu": "float32"}


@dataclass(frozen=True)
class DeviceInfo:
    """One compute device as torch names it ("cuda:0", "xpu:1", "mps", "cpu")."""

    id: str
    kind: str
    index: int
    name: str
    total_memory: int | None = None
    driver: str | None = None
    runtime: str | None = None
    capability: str | None = None
    platform: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def discover_devices() -> list[DeviceInfo]:
    """Every device torch can use here, accelerators first, the CPU last."""
    import torch

    found: list[DeviceInfo] = []
    if torch.cuda.is_available():
        found += [_cuda_info(torch, i) for i in range(torch.cuda.device_count())]
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [_xpu_info(torch, i) for i in range(xpu.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append(DeviceInfo("mps", "mps", 0, f"Apple {platform.machine()} GPU (MPS)", platform="Apple Metal"))
    found.append(_cpu_info())
    return found


def _cuda_info(torch, i: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(i)
    is_rocm = getattr(torch.version, "hip", None) is not None
    return DeviceInfo(
        id=f"cuda:{i}",
        kind="cuda",
        index=i,
        name=props.name,
        total_memory=props.total_memory,
        driver=_nvidia_driver(),
        runtime=("ROCm " + torch.version.hip) if is_rocm else f"CUDA {torch.version.cuda}",
        capability=f"{props.major}.{props.minor}",
        platform="AMD ROCm" if is_rocm else "NVIDIA CUDA",
    )


def _xpu_info(torch, i: int) -> DeviceInfo:
    props = torch.xpu.get_device_properties(i)
    return DeviceInfo(
        id=f"xpu:{i}",
        kind="xpu",
        index=i,
        name=props.name,
        total_memory=getattr(props, "total_memory", None),
        driver=getattr(props, "driver_version", None),
        runtime="oneAPI Level Zero",
        platform="Intel XPU",
    )


def _cpu_info() -> DeviceInfo:
    import psutil

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    cores = os.cpu_count() or 1
    return DeviceInfo("cpu", "cpu", 0, f"{name} ({cores} threads)", psutil.virtual_memory().total, platform="CPU")


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # NVML missing or not initialisable: the driver version is optional
        return None


def resolve_device(name: str | None = "auto", devices: list[DeviceInfo] | None = None) -> DeviceInfo:
    """The device a user asked for ("auto", "cuda", "cuda:1", "xpu", "mps", "cpu"), or a teaching error."""
    devices = devices if devices is not None else discover_devices()
    key = (name or "auto").strip().lower()
    if key == "auto":
        return devices[0]
    if key.isdigit():
        key = f"{devices[0].kind}:{key}"
    if ":" not in key and key != "mps" and key != "cpu":
        key = f"{key}:0"
    if key == "mps:0":
        key = "mps"
    for dev in devices:
        if dev.id == key:
            return dev
    raise DeviceNotAvailable(
        f"Device {name!r} is not available on this machine.",
        field="device",
        hint=f"Available: {', '.join(d.id for d in devices)} (or 'auto').",
    )


def resolve_dtype(name: str | None, device: DeviceInfo) -> str:
    """The torch dtype name for a request: fp16 on CUDA/MPS, bf16 on XPU, fp32 on CPU unless overridden."""
    key = (name or "auto").strip().lower()
    if key == "auto":
        return DEFAULT_DTYPE[device.kind]
    if key not in DTYPES:
        raise InvalidRequest(f"Unknown dtype {name!r}.", field="dtype", hint="Use auto, fp32, fp16 or bf16.")
    dtype = DTYPES[key]
    if device.kind == "cpu" and dtype == "float16":
        raise InvalidRequest(
            "fp16 is not supported for generation on the CPU.", field="dtype", hint="Use fp32 (default) or bf16."
        )
    return dtype


def format_tree(devices: list[DeviceInfo], live: dict[str, dict] | None = None) -> str:
    """A `clinfo -l`-style tree of platforms and devices, with static and live figures."""
    lines: list[str] = []
    platforms: dict[str, list[DeviceInfo]] = {}
    for dev in devices:
        platforms.setdefault(dev.platform or dev.kind, []).append(dev)
    for p, (plat, devs) in enumerate(platforms.items()):
        lines.append(f"Platform #{p}: {plat}")
        for i, dev in enumerate(devs):
            branch = "`--" if i == len(devs) - 1 else "+--"
            lines.append(f" {branch} Device #{dev.index}: {dev.name}  [{dev.id}]")
            pad = "     " if i == len(devs) - 1 else " |   "
            lines += [pad + detail for detail in _details(dev, (live or {}).get(dev.id))]
    return "\n".join(lines)


def _details(dev: DeviceInfo, live: dict | None) -> list[str]:
    out = []
    if dev.total_memory:
        out.append(f"memory: {dev.total_memory / 2**30:.1f} GiB")
    for label, value in (("driver", dev.driver), ("runtime", dev.runtime), ("compute capability", dev.capability)):
        if value:
            out.append(f"{label}: {value}")
    out.append(f"default dtype: {DEFAULT_DTYPE[dev.kind]}")
    if live:
        out.append("live: " + _live_text(live))
    return out


def _live_text(live: dict) -> str:
    if live.get("error") or live.get("unavailable"):
        return f"unavailable ({live.get('error') or live.get('unavailable')})"
    parts = []
    if live.get("utilization") is not None:
        parts.append(f"utilisation {live['utilization']:.0f}%")
    if live.get("memory_used_mib") is not None and live.get("memory_total_mib"):
        free = live.get("memory_free_mib")
        parts.append(f"memory {live['memory_used_mib']:.0f} of {live['memory_total_mib']:.0f} MiB used"
                     + (f", {free:.0f} MiB free" if free is not None else ""))  # fmt: skip
    for key, unit in (("power_w", "W"), ("temperature_c", "°C")):
        if live.get(key) is not None:
            parts.append(f"{live[key]:.0f} {unit}")
    return ", ".join(parts) or "no figures"


def synchronize(device: DeviceInfo) -> None:
    """Wait for queued device work, so host clocks measure it."""
    import torch

    backend = {"cuda": torch.cuda, "xpu": getattr(torch, "xpu", None), "mps": getattr(torch, "mps", None)}
    mod = backend.get(device.kind)
    if mod is not None:
        mod.synchronize()


def reset_peak_memory(device: DeviceInfo) -> None:
    import torch

    if device.kind == "cuda":
        torch.cuda.reset_peak_memory_stats(device.index)
    elif device.kind == "xpu":
        torch.xpu.reset_peak_memory_stats(device.index)


def peak_memory(device: DeviceInfo) -> int | None:
    """Peak bytes allocated by tensors since the last reset (CUDA, XPU); current driver memory on MPS."""
    import torch

    if device.kind == "cuda":
        return int(torch.cuda.max_memory_allocated(device.index))
    if device.kind == "xpu":
        return int(torch.xpu.max_memory_allocated(device.index))
    if device.kind == "mps":
        return int(torch.mps.driver_allocated_memory())
    return None


def empty_cache(device: DeviceInfo) -> None:
    import torch

    if device.kind == "cuda":
        torch.cuda.empty_cache()
    elif device.kind == "xpu":
        torch.xpu.empty_cache()
    elif device.kind == "mps":
        torch.mps.empty_cache()
