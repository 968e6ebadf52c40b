"""The reading every telemetry source returns, the interface they share, and the metric names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class TelemetrySample:
    """One reading of one device; None where the source cannot tell."""

    timestamp: float  # seconds since the epoch, when the reading was taken
    device: str  # "cuda:0", "xpu:0", "mps" or "cpu"
    utilization: float | None  # % of the last interval the device was busy (CPU % for "cpu")
    memory_used_mib: float | None
    memory_total_mib: float | None
    memory_utilization: float | None  # used / total capacity in % (xpu-smi metric 5), not bandwidth
    power_w: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    source: str = ""  # "nvml", "xpu-smi", "torch.xpu", "torch.mps", "psutil", ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_percent(used_mib: float | None, total_mib: float | None) -> float | None:
    """Used memory as a percentage of capacity, or None when either is unknown."""
    if used_mib is None or not total_mib:
        return None
    return 100.0 * used_mib / total_mib


class Sampler:
    """Reads one device; `sample()` is cheap enough to call several times a second from any thread."""

    device: str = "cpu"
    source: str = ""

    def sample(self) -> TelemetrySample:
        raise NotImplementedError

    def close(self) -> None:
        """Release the library handle or subprocess behind this sampler."""

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Metric:
    """A column of `sdplay monitor`: short name, xpu-smi `dump -m` id, sample field and xpu-smi label."""

    name: str
    xpu_smi_id: int | None
    field: str
    label: str
    heading: str


METRICS = (
    Metric("util", 0, "utilization", "GPU Utilization (%)", "util %"),
    Metric("power", 1, "power_w", "GPU Power (W)", "power W"),
    Metric("clock", 2, "sm_clock_mhz", "GPU Frequency (MHz)", "clock MHz"),
    Metric("temp", 3, "temperature_c", "GPU Core Temperature (Celsius Degree)", "temp C"),
    Metric("mem_util", 5, "memory_utilization", "GPU Memory Utilization (%)", "mem util %"),
    Metric("mem_used", 18, "memory_used_mib", "GPU Memory Used (MiB)", "mem used MiB"),
    Metric("mem_total", None, "memory_total_mib", "GPU Memory Total (MiB)", "mem total MiB"),
)
