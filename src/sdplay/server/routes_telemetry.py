"""Live device telemetry as JSON: recent utilisation and memory samples of each worker's device and the host."""

from __future__ import annotations

import logging
import threading
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, Field

from sdplay.errors import SdplayError
from sdplay.server.auth import require_api_key

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["system"], dependencies=[Depends(require_api_key)])

INTERVAL_S = 1.0
HISTORY = 600  # samples kept per device (10 minutes at one a second)
FIELDS = ("timestamp", "utilization", "memory_used_mib", "memory_total_mib", "power_w", "temperature_c")


class DeviceSeries(BaseModel):
    device: str
    source: str = ""
    error: str | None = None
    samples: list[dict[str, float | None]] = Field(
        [], description=f"Oldest first; each has {', '.join(FIELDS)} (None where the device cannot tell)."
    )


class TelemetryView(BaseModel):
    interval_s: float
    devices: list[DeviceSeries]


class LiveTelemetry:
    """One background Monitor per device, started on the first request and stopped with the app."""

    def __init__(self, devices: list[str]):
        self.devices = devices
        self.monitors: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        from sdplay.telemetry import Monitor, resolve_device

        with self._lock:
            if self.monitors or self.errors:
                return
            for spec in self.devices:
                try:
                    name = resolve_device(spec)
                    if name not in self.monitors:
                        self.monitors[name] = Monitor(name, interval=INTERVAL_S, maxlen=HISTORY).start()
                except SdplayError as exc:  # telemetry is a nicety: report it, never fail the request
                    self.errors[str(spec)] = str(exc)

    def view(self, since: float | None) -> TelemetryView:
        self.ensure_started()
        series = [
            DeviceSeries(
                device=name,
                source=monitor.sampler.source,
                samples=[{k: getattr(s, k) for k in FIELDS} for s in monitor.samples(since)],
            )
            for name, monitor in self.monitors.items()
        ]
        series += [DeviceSeries(device=spec, error=text) for spec, text in self.errors.items()]
        return TelemetryView(interval_s=INTERVAL_S, devices=series)

    def stop(self) -> None:
        with self._lock:
            for monitor in self.monitors.values():
                monitor.stop(timeout=2.0)


def live_telemetry(request: Request) -> LiveTelemetry:
    app = request.app
    with _create_lock:
        if getattr(app.state, "telemetry", None) is None:
            workers = [w.device for w in app.state.service.workers]
            app.state.telemetry = LiveTelemetry([*dict.fromkeys([*workers, "cpu"])])
    return app.state.telemetry


_create_lock = threading.Lock()


def stop(app: FastAPI) -> None:
    """Stop the monitors this app started (called when the app shuts down)."""
    telemetry = getattr(app.state, "telemetry", None)
    if telemetry is not None:
        telemetry.stop()


@router.get("/telemetry", response_model=TelemetryView, summary="Device utilisation and memory")
def telemetry(
    since: float | None = Query(None, description="Only samples taken after this unix time."),
    live: LiveTelemetry = Depends(live_telemetry),
) -> TelemetryView:
    """Samples of each worker's device and of the host, one a second, the last 10 minutes (first call starts them)."""
    return live.view(since)
