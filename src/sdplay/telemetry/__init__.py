"""Accelerator telemetry: utilisation, memory, power and temperature of CUDA, XPU, MPS and CPU devices.

`record(device)` traces one generation, `Monitor` samples in the background, `live_figures(device)`
reads once, `sampler_for(device)` gives the raw sampler. Vendor libraries are imported only when used.
"""

from typing import Any

from sdplay.telemetry.factory import default_device, live_figures, resolve_device, sampler_for, shared_sampler
from sdplay.telemetry.monitor import Monitor, Trace, energy_joules, record, summarize
from sdplay.telemetry.sample import METRICS, Metric, Sampler, TelemetrySample

__all__ = [
    "METRICS",
    "Metric",
    "Monitor",
    "Sampler",
    "TelemetrySample",
    "Trace",
    "default_device",
    "energy_joules",
    "live_figures",
    "record",
    "register_prometheus",
    "resolve_device",
    "sampler_for",
    "shared_sampler",
    "summarize",
]


def register_prometheus(registry: Any, monitors: Any = None, **options: Any) -> Any:
    """Device gauges on a prometheus_client registry; see `sdplay.telemetry.prometheus.register_prometheus`."""
    from sdplay.telemetry.prometheus import register_prometheus as register

    return register(registry, monitors, **options)
