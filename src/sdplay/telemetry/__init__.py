"""Accelerator telemetry: utilisation, memory, power and temperature of CUDA, XPU, MPS and CPU devices.

`record(device)` traces one generation, `Monitor` samples in the background, `live_figures(device)`
reads once, `sampler_for(device)` gives the raw sampler. Vendor libraries are imported only when used.
"""

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
    "resolve_device",
    "sampler_for",
    "shared_sampler",
    "summarize",
]
