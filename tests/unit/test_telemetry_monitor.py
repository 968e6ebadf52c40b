"""Monitor thread and ring buffer, trace summaries and their energy integral, Prometheus gauges."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sdplay.errors import DeviceNotAvailable, InvalidRequest
from sdplay.telemetry import Monitor, Sampler, TelemetrySample, energy_joules, record, summarize
from sdplay.telemetry.factory import close_shared_samplers
from sdplay.telemetry.prometheus import register_telemetry_metrics


class ScriptedSampler(Sampler):
    """A GPU that does not exist here: returns prepared readings in turn, then repeats the last one."""

    source = "scripted"

    def __init__(self, readings: list[dict] | None = None, device: str = "cuda:0", fail_first: int = 0) -> None:
        self.device = device
        self.readings = readings or [{}]
        self.calls = 0
        self.fail_first = fail_first

    def sample(self) -> TelemetrySample:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise DeviceNotAvailable("the driver hiccuped")
        reading = self.readings[min(self.calls - 1 - self.fail_first, len(self.readings) - 1)]
        base = {"timestamp": time.time(), "device": self.device, "utilization": 50.0, "memory_used_mib": 100.0}
        base |= {"memory_total_mib": 1000.0, "memory_utilization": 10.0, "source": self.source}
        return TelemetrySample(**(base | reading))


def at(t: float, power: float | None = None, util: float | None = None, mem: float | None = None) -> TelemetrySample:
    return TelemetrySample(t, "cuda:0", util, mem, 80_000.0, None, power_w=power, source="scripted")


@pytest.fixture(autouse=True)
def _fresh_shared_samplers():
    yield
    close_shared_samplers()


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_ring_buffer_keeps_the_newest_maxlen_samples():
    sampler = ScriptedSampler()
    monitor = Monitor(sampler, interval=0.005, maxlen=5).start()
    try:
        wait_until(lambda: sampler.calls >= 20)
    finally:
        monitor.stop()
    samples = monitor.samples()
    assert len(samples) == 5
    assert [s.timestamp for s in samples] == sorted(s.timestamp for s in samples)
    assert monitor.latest() == samples[-1]


def test_stop_ends_the_thread_and_sampling():
    sampler = ScriptedSampler()
    with Monitor(sampler, interval=0.01) as monitor:
        wait_until(lambda: sampler.calls >= 3)
        assert monitor.running
    assert not monitor.running
    assert not any(t.name.startswith("sdplay-monitor-cuda:0") for t in threading.enumerate())
    calls = sampler.calls
    time.sleep(0.05)
    assert sampler.calls == calls


def test_first_sample_is_taken_at_start_and_stop_does_not_wait_for_the_interval():
    sampler = ScriptedSampler()
    monitor = Monitor(sampler, interval=60.0).start()
    wait_until(lambda: monitor.latest() is not None, timeout=2.0)
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 1.0 and not monitor.running


def test_samples_since():
    sampler = ScriptedSampler()
    monitor = Monitor(sampler, interval=1.0)
    first = monitor.sample_now()
    time.sleep(0.01)
    second = monitor.sample_now()
    assert monitor.samples() == [first, second]
    assert monitor.samples(since=first.timestamp) == [second]
    assert monitor.samples(since=second.timestamp) == []


def test_a_failing_sampler_is_logged_once_and_the_thread_keeps_going(caplog):
    sampler = ScriptedSampler(fail_first=3)
    with caplog.at_level(logging.WARNING, logger="sdplay.telemetry.monitor"), Monitor(sampler, 0.005) as monitor:
        wait_until(lambda: len(monitor.samples()) >= 2)
    assert len(caplog.records) == 1 and "the driver hiccuped" in caplog.records[0].getMessage()


def test_interval_must_be_positive():
    with pytest.raises(InvalidRequest):
        Monitor(ScriptedSampler(), interval=0)


def test_energy_is_the_trapezoid_integral_of_power():
    samples = [at(10.0, 100.0), at(11.0, 200.0), at(12.0, 200.0), at(13.5, 100.0)]
    # (100+200)/2*1 + (200+200)/2*1 + (200+100)/2*1.5 = 150 + 200 + 225
    assert energy_joules(samples) == pytest.approx(575.0)
    # readings without power are skipped: their neighbours are joined
    assert energy_joules([at(0.0, 50.0), at(1.0), at(2.0, 150.0)]) == pytest.approx(200.0)
    assert energy_joules([at(0.0, 50.0), at(1.0)]) is None
    assert energy_joules([]) is None


def test_summary_arithmetic():
    samples = [at(0.0, 100.0, 10.0, 500.0), at(0.5, 300.0, 90.0, 2500.0), at(1.0, 200.0, None, 1500.0)]
    summary = summarize(samples, duration_s=1.25)
    assert summary["samples"] == 3
    assert summary["duration_s"] == 1.25
    assert summary["utilization_avg"] == pytest.approx(50.0)  # unknown readings do not count as 0
    assert summary["utilization_peak"] == 90.0
    assert summary["memory_used_peak_mib"] == 2500.0
    assert summary["memory_total_mib"] == 80_000.0
    assert summary["power_avg_w"] == pytest.approx(200.0) and summary["power_peak_w"] == 300.0
    assert summary["energy_j"] == pytest.approx(0.5 * (100 + 300) / 2 + 0.5 * (300 + 200) / 2)
    assert summary["temperature_peak_c"] is None
    empty = summarize([], 0.0)
    assert empty["samples"] == 0 and empty["utilization_avg"] is None and empty["energy_j"] is None


def test_record_traces_a_run_from_a_sampler():
    readings = [{"utilization": u, "power_w": 100.0 + u, "memory_used_mib": 1000.0 + u} for u in (10.0, 60.0, 95.0)]
    sampler = ScriptedSampler(readings)
    with record(sampler, interval=0.01) as trace:
        wait_until(lambda: sampler.calls >= 3)
        assert trace.summary()["samples"] >= 1  # readable while running
    summary = trace.summary()
    assert summary["device"] == "cuda:0" and summary["source"] == "scripted"
    assert summary["samples"] == len(trace.samples) >= 4  # one more is taken at the end
    assert summary["utilization_peak"] == 95.0 and summary["memory_used_peak_mib"] == 1095.0
    assert summary["energy_j"] == pytest.approx(energy_joules(trace.samples))
    assert summary["energy_j"] > 0 and summary["duration_s"] > 0
    assert trace.monitor is not None and not trace.monitor.running


def test_record_cpu_for_real():
    with record("cpu", interval=0.05) as trace:
        time.sleep(0.3)
    summary = trace.summary()
    assert summary["device"] == "cpu" and summary["source"] == "psutil"
    assert summary["samples"] >= 3 and 0.25 < summary["duration_s"] < 5
    assert 0 <= summary["utilization_avg"] <= summary["utilization_peak"] <= 100
    assert summary["memory_used_peak_mib"] > 0 and summary["energy_j"] is None


def test_record_never_fails_the_block(caplog):
    with caplog.at_level(logging.WARNING, logger="sdplay.telemetry.monitor"), record("tpu:0") as trace:
        ran = True
    assert ran and len(caplog.records) == 1 and "no telemetry for tpu:0" in caplog.records[0].getMessage()
    summary = trace.summary()
    assert summary["samples"] == 0 and "Unknown device" in summary["error"]


def test_record_stops_sampling_when_the_block_raises():
    sampler = ScriptedSampler()
    with pytest.raises(RuntimeError), record(sampler, interval=0.01) as trace:
        raise RuntimeError("generation failed")
    assert trace.ended is not None and not trace.monitor.running


def test_prometheus_gauges_from_monitors():
    gpu = Monitor(ScriptedSampler([{"power_w": 250.5, "temperature_c": 61.0, "sm_clock_mhz": 1980.0}]))
    cpu = Monitor(ScriptedSampler(device="cpu"))
    idle = Monitor(ScriptedSampler(device="xpu:1"))  # never sampled: no series
    gpu.sample_now()
    cpu.sample_now()
    registry = CollectorRegistry()
    register_telemetry_metrics(registry, [gpu, cpu, idle])
    text = generate_latest(registry).decode()
    assert 'sdplay_device_utilization_percent{device="cuda:0"} 50.0' in text
    assert 'sdplay_device_memory_used_bytes{device="cuda:0"} 1.048576e+08' in text
    assert 'sdplay_device_memory_total_bytes{device="cpu"} 1.048576e+09' in text
    assert 'sdplay_device_power_watts{device="cuda:0"} 250.5' in text
    assert 'sdplay_device_temperature_celsius{device="cuda:0"} 61.0' in text
    assert 'sdplay_device_clock_hertz{device="cuda:0"} 1.98e+09' in text
    assert 'sdplay_device_power_watts{device="cpu"}' not in text  # unknown, not 0
    assert "xpu:1" not in text
    assert "# TYPE sdplay_device_power_watts gauge" in text


def test_prometheus_leaves_out_stale_samples():
    monitor = Monitor(ScriptedSampler([{"timestamp": time.time() - 60}]), interval=1.0)
    monitor.sample_now()
    registry = CollectorRegistry()
    register_telemetry_metrics(registry, monitor)
    assert "cuda:0" not in generate_latest(registry).decode()
    fresh = CollectorRegistry()
    register_telemetry_metrics(fresh, monitor, max_age_s=120)
    assert 'sdplay_device_utilization_percent{device="cuda:0"} 50.0' in generate_latest(fresh).decode()


def test_register_prometheus_with_the_registry_only():
    from sdplay import telemetry

    registry = CollectorRegistry()
    collector = telemetry.register_prometheus(registry, devices=["cpu", "CPU", "tpu:0"])  # tpu: one warning
    try:
        assert [m.device for m in collector.monitors] == ["cpu"] and collector.monitors[0].running
        wait_until(lambda: collector.monitors[0].latest() is not None)
        text = generate_latest(registry).decode()
    finally:
        for monitor in collector.monitors:
            monitor.stop()
    assert 'sdplay_device_utilization_percent{device="cpu"}' in text
    assert 'sdplay_device_memory_total_bytes{device="cpu"}' in text
