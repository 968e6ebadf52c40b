"""NVIDIA GPUs through NVML (nvidia-ml-py), in-process: no nvidia-smi subprocess."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from sdplay.errors import DeviceNotAvailable
from sdplay.telemetry.sample import MIB, Sampler, TelemetrySample, memory_percent


def nvml_index_for(cuda_index: int, visible: str | None, uuids: Sequence[str]) -> int:
    """NVML index of torch's `cuda:N`, following CUDA_VISIBLE_DEVICES (indices or GPU-UUID prefixes).

    Like CUDA, the list stops at its first entry that names no GPU. MIG entries are not mapped:
    NVML reports no utilisation for MIG slices.
    """
    if visible is None:
        mapped = list(range(len(uuids)))
    else:
        mapped = []
        for entry in (e.strip() for e in visible.split(",")):
            if entry.isdigit() and int(entry) < len(uuids):
                mapped.append(int(entry))
                continue
            matches = [i for i, uuid in enumerate(uuids) if entry.startswith("GPU-") and uuid.startswith(entry)]
            if len(matches) != 1:
                break
            mapped.append(matches[0])
    if not 0 <= cuda_index < len(mapped):
        raise DeviceNotAvailable(
            f"cuda:{cuda_index} does not exist here: {len(mapped)} NVIDIA GPU(s) visible"
            + (f" with CUDA_VISIBLE_DEVICES={visible!r}." if visible is not None else "."),
            hint=f"Use cuda:0 to cuda:{len(mapped) - 1}." if mapped else "Use cpu, or fix CUDA_VISIBLE_DEVICES.",
        )
    return mapped[cuda_index]


def load_nvml() -> Any:
    """Import and initialise pynvml; raise DeviceNotAvailable saying what is missing."""
    try:
        import pynvml
    except ImportError as exc:
        raise DeviceNotAvailable(
            "NVIDIA telemetry needs NVML bindings.", hint="Install them: pip install nvidia-ml-py"
        ) from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise DeviceNotAvailable(
            f"NVML cannot be initialised ({exc}).", hint="Install the NVIDIA driver, or use another device."
        ) from exc
    return pynvml


class NvmlSampler(Sampler):
    """Utilisation, memory, power, temperature and SM clock of one NVIDIA GPU."""

    source = "nvml"

    def __init__(self, cuda_index: int = 0) -> None:
        self._nvml = nvml = load_nvml()
        try:
            count = nvml.nvmlDeviceGetCount()
            uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
            self.nvml_index = _torch_index(cuda_index, uuids)
            if self.nvml_index is None:
                self.nvml_index = nvml_index_for(cuda_index, os.environ.get("CUDA_VISIBLE_DEVICES"), uuids)
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self.nvml_index)
        except BaseException:
            nvml.nvmlShutdown()
            raise
        self.device = f"cuda:{cuda_index}"

    def sample(self) -> TelemetrySample:
        nvml, handle = self._nvml, self._handle
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)  # device-wide; used = total - free
        used, total = memory.used / MIB, memory.total / MIB
        power_mw = self._try(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        return TelemetrySample(
            timestamp=time.time(),
            device=self.device,
            utilization=self._try(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
            memory_used_mib=used,
            memory_total_mib=total,
            memory_utilization=memory_percent(used, total),
            power_w=None if power_mw is None else power_mw / 1000.0,
            temperature_c=self._try(lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
            sm_clock_mhz=self._try(lambda: float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))),
            source=self.source,
        )

    def process_memory_mib(self, pid: int | None = None) -> float | None:
        """GPU memory NVML charges to one process (this one by default); None if NVML does not list it."""
        pid = os.getpid() if pid is None else pid
        processes = self._try(lambda: self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)) or []
        for process in processes:
            if process.pid == pid and process.usedGpuMemory is not None:
                return process.usedGpuMemory / MIB
        return None

    def energy_j(self) -> float | None:
        """The GPU's energy counter since the driver loaded, in joules (Volta and later)."""
        millijoules = self._try(lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        return None if millijoules is None else millijoules / 1000.0

    def close(self) -> None:
        if self._handle is not None:
            self._handle = None
            self._nvml.nvmlShutdown()

    def _try(self, read: Callable[[], Any]) -> Any:
        """A reading, or None where this GPU or driver does not support it."""
        try:
            return read()
        except self._nvml.NVMLError:
            return None


def _torch_index(cuda_index: int, uuids: Sequence[str]) -> int | None:
    """Exact mapping by UUID when torch has already initialised CUDA in this process; else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return None
    uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    return uuids.index(uuid) if uuid in uuids else None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
