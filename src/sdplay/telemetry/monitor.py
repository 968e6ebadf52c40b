"""Background sampling into a ring buffer, and the trace of one generation."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from statistics import fmean
from typing import Any

from sdplay.errors import InvalidRequest, SdplayError
from sdplay.telemetry.factory import shared_sampler
from sdplay.telemetry.sample import Sampler, TelemetrySample

log = logging.getLogger(__name__)


class Monitor:
    """Samples one device every `interval` seconds in a daemon thread, keeping the last `maxlen` samples.

    A device name uses this process's shared sampler; a Sampler passed in is used as is. The monitor
    never closes its sampler.
    """

    def __init__(self, device: str | Sampler = "cpu", interval: float = 1.0, maxlen: int = 3600) -> None:
        if not interval > 0:
            raise InvalidRequest(f"interval must be positive, got {interval}.", field="interval")
        self.sampler = device if isinstance(device, Sampler) else shared_sampler(device)
        self.interval = interval
        self._buffer: deque[TelemetrySample] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    @property
    def device(self) -> str:
        return self.sampler.device

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Monitor:
        """Start sampling (the first sample is taken at once); starting a running monitor does nothing."""
        if not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"sdplay-monitor-{self.device}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop sampling and wait for the thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else max(5.0, 2 * self.interval))

    def sample_now(self) -> TelemetrySample | None:
        """Take one sample now and keep it; None if the sampler failed."""
        try:
            sample = self.sampler.sample()
        except Exception as exc:  # a failed reading must never end the thread; say it once
            if not self._warned:
                log.warning("telemetry of %s: reading failed (%s); will keep trying quietly.", self.device, exc)
                self._warned = True
            return None
        with self._lock:
            self._buffer.append(sample)
        return sample

    def latest(self) -> TelemetrySample | None:
        with self._lock:
            return self._buffer[-1] if self._buffer else None

    def samples(self, since: float | None = None) -> list[TelemetrySample]:
        """The buffered samples, oldest first; only those taken after `since` (epoch seconds) if given."""
        with self._lock:
            return [s for s in self._buffer if since is None or s.timestamp > since]

    def _run(self) -> None:
        deadline = time.monotonic()
        while True:
            self.sample_now()
            deadline += self.interval
            delay = deadline - time.monotonic()
            if delay < 0:  # a slow reading: start again from now rather than catch up in a burst
                deadline, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                return

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Trace:
    """The samples of one run and their summary; made by `record()`."""

    def __init__(self, device: str, monitor: Monitor | None, error: str | None = None) -> None:
        self.device = device
        self.monitor = monitor
        self.error = error
        self.started = time.time()
        self.ended: float | None = None

    def finish(self) -> None:
        """Stop sampling, with one last sample so that even a short run has two."""
        if self.ended is None and self.monitor is not None:
            self.monitor.stop()
            self.monitor.sample_now()
        self.ended = self.ended or time.time()

    @property
    def samples(self) -> list[TelemetrySample]:
        return self.monitor.samples() if self.monitor else []

    def summary(self) -> dict[str, Any]:
        """Averages, peaks and energy of the run so far (or of the whole run once it has ended)."""
        duration = (self.ended or time.time()) - self.started
        summary = summarize(self.samples, duration)
        summary["device"] = self.device
        if self.error:
            summary["error"] = self.error
        return summary


@contextmanager
def record(device: str | Sampler, interval: float = 0.1) -> Iterator[Trace]:
    """Sample `device` while the block runs: `with record("cuda:0") as trace: ...; trace.summary()`.

    Telemetry never fails the block: if the device cannot be read, one warning is logged and the
    summary has 0 samples and an 'error' entry.
    """
    name = device if isinstance(device, str) else device.device
    try:
        monitor = Monitor(device, interval=interval, maxlen=max(1000, int(3600 / interval)))
    except SdplayError as exc:
        log.warning("no telemetry for %s: %s", name, exc)
        trace = Trace(name, None, error=str(exc))
    else:
        trace = Trace(monitor.device, monitor.start())
    try:
        yield trace
    finally:
        trace.finish()


def energy_joules(samples: Sequence[TelemetrySample]) -> float | None:
    """Trapezoid integral of power over time across the samples whose power is known; None if under two."""
    points = [(s.timestamp, s.power_w) for s in samples if s.power_w is not None]
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in pairwise(points))


def summarize(samples: Sequence[TelemetrySample], duration_s: float) -> dict[str, Any]:
    """Sample count, average and peak utilisation, peak memory, power, energy and duration of a run."""

    def known(field: str) -> list[float]:
        return [v for s in samples if (v := getattr(s, field)) is not None]

    util, memory, power = known("utilization"), known("memory_used_mib"), known("power_w")
    temperature, totals = known("temperature_c"), known("memory_total_mib")
    return {
        "device": samples[-1].device if samples else None,
        "source": samples[-1].source if samples else None,
        "samples": len(samples),
        "duration_s": duration_s,
        "utilization_avg": fmean(util) if util else None,
        "utilization_peak": max(util, default=None),
        "memory_used_peak_mib": max(memory, default=None),
        "memory_total_mib": totals[-1] if totals else None,
        "power_avg_w": fmean(power) if power else None,
        "power_peak_w": max(power, default=None),
        "energy_j": energy_joules(samples),
        "temperature_peak_c": max(temperature, default=None),
    }
