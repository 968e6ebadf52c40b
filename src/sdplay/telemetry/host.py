"""CPU and host memory through psutil: available everywhere, so telemetry always works."""

from __future__ import annotations

import threading
import time

import psutil

from sdplay.telemetry.sample import MIB, Sampler, TelemetrySample

_MIN_WINDOW_S = 0.1  # a CPU percentage over a shorter window is mostly noise


class HostSampler(Sampler):
    """CPU utilisation (all cores) and host memory in use (total minus available)."""

    device = "cpu"
    source = "psutil"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (time.monotonic(), psutil.cpu_times())

    def sample(self) -> TelemetrySample:
        memory = psutil.virtual_memory()
        return TelemetrySample(
            timestamp=time.time(),
            device=self.device,
            utilization=self._cpu_percent(),
            memory_used_mib=(memory.total - memory.available) / MIB,
            memory_total_mib=memory.total / MIB,
            memory_utilization=memory.percent,
            source=self.source,
        )

    def _cpu_percent(self) -> float:
        """Busy share of CPU time since this sampler's previous reading (its own state, unlike psutil's)."""
        with self._lock:
            then, before = self._last
            wait = _MIN_WINDOW_S - (time.monotonic() - then)
            if wait > 0:
                time.sleep(wait)
            now = psutil.cpu_times()
            self._last = (time.monotonic(), now)
        total = _total(now) - _total(before)
        idle = (now.idle - before.idle) + (getattr(now, "iowait", 0.0) - getattr(before, "iowait", 0.0))
        if total <= 0:
            return 0.0
        return min(100.0, max(0.0, 100.0 * (total - idle) / total))


def _total(times: tuple[float, ...]) -> float:
    """All CPU time; on Linux guest time is already inside user time, so it is not counted twice."""
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
