"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from sdplay.telemetry.prometheus import TelemetryCollector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """Queue depth, job latency, images generated, batch sizes, and device gauges from telemetry."""

    def __init__(self, queue_depth: Callable[[], int]):
        self.registry = CollectorRegistry()
        depth = Gauge("sdplay_queue_depth", "Jobs waiting in the queue.", registry=self.registry)
        depth.set_function(queue_depth)
        self.running = Gauge("sdplay_jobs_running", "Jobs being generated now.", registry=self.registry)
        self.latency = Histogram(
            "sdplay_job_latency_seconds",
            "Seconds from submission to the end of a job.",
            ["api", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "sdplay_images_generated", "Images generated and stored.", ["model"], registry=self.registry
        )
        self.jobs = Counter("sdplay_jobs", "Jobs finished, by outcome.", ["api", "status"], registry=self.registry)
        self.rejected = Counter(
            "sdplay_jobs_rejected", "Jobs refused because the queue was full.", registry=self.registry
        )
        self.batch = Histogram(
            "sdplay_batch_requests",
            "Requests run together in one engine batch.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=self.registry,
        )
        self._device_collector: TelemetryCollector | None = None

    def start_device_metrics(self, devices: list[str]) -> bool:
        """Add device utilisation/memory gauges (their monitors run until `stop`)."""
        self._device_collector = register_device_metrics(self.registry, devices)
        return self._device_collector is not None

    def stop(self) -> None:
        for monitor in self._device_collector.monitors if self._device_collector is not None else []:
            try:
                monitor.stop(timeout=2.0)
            except Exception:  # stopping telemetry must never block shutdown
                log.debug("could not stop a telemetry monitor", exc_info=True)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def register_device_metrics(registry: CollectorRegistry, devices: list[str]) -> TelemetryCollector | None:
    """Device gauges from `sdplay.telemetry.register_prometheus(registry, devices=...)`; None if unavailable."""
    from sdplay.telemetry import default_device, register_prometheus

    devices = list(dict.fromkeys(default_device() if d == "auto" else d for d in devices))
    try:
        return register_prometheus(registry, devices=devices)
    except Exception:  # telemetry must never stop the server from starting
        log.exception("sdplay.telemetry.register_prometheus failed; /metrics has no device gauges")
        return None
