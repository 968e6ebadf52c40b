"""Prometheus gauges of device telemetry, read from monitors' latest samples at scrape time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from sdplay.errors import SdplayError
from sdplay.telemetry.factory import default_device, device_name
from sdplay.telemetry.monitor import Monitor
from sdplay.telemetry.sample import MIB

log = logging.getLogger(__name__)

# (metric name, help, sample field, scale to the metric's base unit)
GAUGES = (
    ("sdplay_device_utilization_percent", "Share of time the device was busy (CPU % for cpu).", "utilization", 1.0),
    ("sdplay_device_memory_used_bytes", "Device memory in use, all processes.", "memory_used_mib", MIB),
    ("sdplay_device_memory_total_bytes", "Device memory capacity.", "memory_total_mib", MIB),
    ("sdplay_device_power_watts", "Device power draw.", "power_w", 1.0),
    ("sdplay_device_temperature_celsius", "Device core temperature.", "temperature_c", 1.0),
    ("sdplay_device_clock_hertz", "Device SM / graphics clock.", "sm_clock_mhz", 1e6),
)


class TelemetryCollector(Collector):
    """Turns each monitor's latest sample into gauges labelled by device; stale or missing values are left out."""

    def __init__(self, monitors: Iterable[Monitor], max_age_s: float | None = None) -> None:
        self.monitors = list(monitors)
        self.max_age_s = max_age_s

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        now = time.time()
        for monitor in self.monitors:
            sample = monitor.latest()
            max_age = self.max_age_s if self.max_age_s is not None else max(10.0, 5 * monitor.interval)
            if sample is None or now - sample.timestamp > max_age:
                continue
            for family, (_, _, field, scale) in zip(families, GAUGES, strict=True):
                value = getattr(sample, field)
                if value is not None:
                    family.add_metric([sample.device], value * scale, timestamp=None)
        return iter(families)

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, doc, labels=["device"]) for name, doc, _, _ in GAUGES]


def register_telemetry_metrics(
    registry: CollectorRegistry, monitors: Monitor | Iterable[Monitor], max_age_s: float | None = None
) -> TelemetryCollector:
    """Register device gauges fed by `monitors` (started by the caller) on `registry`; return the collector."""
    collector = TelemetryCollector([monitors] if isinstance(monitors, Monitor) else monitors, max_age_s)
    registry.register(collector)
    return collector


def register_prometheus(
    registry: CollectorRegistry,
    monitors: Monitor | Iterable[Monitor] | None = None,
    *,
    devices: Iterable[str] | None = None,
    interval: float = 1.0,
) -> TelemetryCollector:
    """Device gauges on `registry`; without monitors, starts one per device (default: first accelerator and cpu)."""
    if monitors is None:
        monitors = []
        for device in devices or [default_device(), "cpu"]:
            try:
                if device_name(device) not in (m.device for m in monitors):
                    monitors.append(Monitor(device_name(device), interval=interval).start())
            except SdplayError as exc:  # one device without telemetry must not hide the others
                log.warning("no device gauges for %s: %s", device, exc)
    return register_telemetry_metrics(registry, monitors)
