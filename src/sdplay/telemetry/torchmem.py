"""Memory figures from torch itself: Apple MPS, and the fallback for CUDA/XPU without their vendor tool."""

from __future__ import annotations

import time
from typing import Any

from sdplay.errors import DeviceNotAvailable
from sdplay.telemetry.sample import MIB, Sampler, TelemetrySample, memory_percent


class TorchMemorySampler(Sampler):
    """Memory used and total as torch reports them; utilisation, power and temperature stay None."""

    def __init__(self, kind: str, index: int = 0) -> None:
        import torch

        self._torch, self.kind, self.index = torch, kind, index
        self.device = "mps" if kind == "mps" else f"{kind}:{index}"
        self.source = f"torch.{kind}"
        if not _available(torch, kind, index):
            raise DeviceNotAvailable(
                f"{self.device} is not available to torch {torch.__version__}.",
                hint="Run `sdplay devices` to see the devices this machine has.",
            )

    def sample(self) -> TelemetrySample:
        used, total = self._memory_bytes()
        used_mib, total_mib = used / MIB, (total / MIB if total else None)
        return TelemetrySample(
            timestamp=time.time(),
            device=self.device,
            utilization=None,
            memory_used_mib=used_mib,
            memory_total_mib=total_mib,
            memory_utilization=memory_percent(used_mib, total_mib),
            source=self.source,
        )

    def _memory_bytes(self) -> tuple[int, int | None]:
        """(used, total): MPS driver allocation vs its recommended maximum; else device-wide free/total."""
        if self.kind == "mps":
            mps = self._torch.mps
            recommended = getattr(mps, "recommended_max_memory", None)
            return mps.driver_allocated_memory(), recommended() if recommended else None
        backend: Any = getattr(self._torch, self.kind)
        try:
            free, total = backend.mem_get_info(self.index)
            return total - free, total
        except (AttributeError, RuntimeError):  # older torch.xpu: only this process's reserved memory
            return backend.memory_reserved(self.index), backend.get_device_properties(self.index).total_memory


def _available(torch: Any, kind: str, index: int) -> bool:
    if kind == "mps":
        return bool(torch.backends.mps.is_available())
    backend = getattr(torch, kind, None)
    return bool(backend is not None and backend.is_available() and index < backend.device_count())
