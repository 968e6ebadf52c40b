"""GET /api/v1/telemetry: recent samples of each worker's device and of the host, for the device page."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.server

FIELDS = {"timestamp", "utilization", "memory_used_mib", "memory_total_mib", "power_w", "temperature_c"}


def test_telemetry_returns_host_samples_and_filters_by_time(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.get("/api/v1/telemetry").raise_for_status()  # the first call starts the monitors
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            view = client.get("/api/v1/telemetry").json()
            cpu = next(d for d in view["devices"] if d["device"] == "cpu")
            if len(cpu["samples"]) >= 2:
                break
            time.sleep(0.2)
        assert view["interval_s"] > 0 and cpu["source"] == "psutil" and cpu["error"] is None
        assert len(cpu["samples"]) >= 2 and set(cpu["samples"][0]) == FIELDS
        last = cpu["samples"][-1]
        assert 0 <= last["utilization"] <= 100 and 0 < last["memory_used_mib"] < last["memory_total_mib"]
        times = [s["timestamp"] for s in cpu["samples"]]
        assert times == sorted(times)
        newer = client.get("/api/v1/telemetry", params={"since": times[-2]}).json()
        later = next(d for d in newer["devices"] if d["device"] == "cpu")["samples"]
        assert later and all(s["timestamp"] > times[-2] for s in later)
        assert client.get("/api/v1/telemetry", params={"since": "soon"}).json()["error"]["field"] == "since"
