"""Accelerator telemetry: utilisation, memory, power and temperature of CUDA, XPU, MPS and CPU devices.

`record(device)` traces one generation, `Monitor` samples in the background, `live_figures(device)`
reads once, `sampler_for(device)` gives the raw sampler. Vendor libraries (and psutil) are imported only when
used: the names below load their module at first access, so `sdplay --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdplay.telemetry.factory import default_device, live_figures, resolve_device, sampler_for, shared_sampler
    from sdplay.telemetry.monitor import Monitor, Trace, energy_joules, record, summarize
    from sdplay.telemetry.sample import METRICS, Metric, Sampler, TelemetrySample

_HOMES = {
    "factory": ("default_device", "live_figures", "resolve_device", "sampler_for", "shared_sampler"),
    "monitor": ("Monitor", "Trace", "energy_joules", "record", "summarize"),
    "sample": ("METRICS", "Metric", "Sampler", "TelemetrySample"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'sdplay.telemetry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sdplay.telemetry.{module}"), name)
    globals()[name] = value
    return value
