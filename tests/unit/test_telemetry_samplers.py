"""Samplers on this machine: psutil for real; missing vendor tools give one clear error; device names."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import psutil
import pytest

from sdplay.errors import DeviceNotAvailable
from sdplay.telemetry import TelemetrySample, live_figures, resolve_device, sampler_for
from sdplay.telemetry.factory import close_shared_samplers, device_name
from sdplay.telemetry.host import HostSampler
from sdplay.telemetry.nvidia import nvml_index_for

UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-cccc3333-0000"]


@pytest.fixture(autouse=True)
def _fresh_shared_samplers():
    yield
    close_shared_samplers()


def test_host_sampler_reads_real_cpu_and_memory():
    with sampler_for("cpu") as sampler:
        assert isinstance(sampler, HostSampler)
        first, second = sampler.sample(), sampler.sample()
    total_mib = psutil.virtual_memory().total / 2**20
    for s in (first, second):
        assert s.device == "cpu" and s.source == "psutil"
        assert 0.0 <= s.utilization <= 100.0
        assert s.memory_total_mib == pytest.approx(total_mib)
        assert 0 < s.memory_used_mib < s.memory_total_mib
        assert s.memory_utilization == pytest.approx(100 * s.memory_used_mib / s.memory_total_mib, abs=1.0)
        assert s.power_w is None and s.temperature_c is None and s.sm_clock_mhz is None
    assert second.timestamp > first.timestamp


def test_host_sampler_sees_a_busy_core():
    sampler = HostSampler()
    sampler.sample()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        readings = [sampler.sample().utilization for _ in range(5)]  # >= 0.1 s apiece
    finally:
        busy.kill()
        busy.wait()
    assert max(readings) >= 100.0 / psutil.cpu_count() * 0.7  # one spinning process fills one core


def test_sample_is_frozen():
    sample = TelemetrySample(0.0, "cpu", 1.0, 2.0, 4.0, 50.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.utilization = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cuda", "cuda:0"), ("CUDA:1", "cuda:1"), ("xpu", "xpu:0"), ("mps", "mps"), ("cpu", "cpu"), ("cpu:0", "cpu")],
)
def test_device_names(device, expected):
    assert device_name(device) == expected


@pytest.mark.parametrize("device", ["tpu:0", "cuda:x", "gpu", ""])
def test_unknown_device_is_one_clear_error(device):
    with pytest.raises(DeviceNotAvailable) as info:
        sampler_for(device)
    assert "\n" not in str(info.value) and "cuda:N, xpu:N, mps or cpu" in str(info.value)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_cuda_without_driver_is_one_clear_error():
    with pytest.raises(DeviceNotAvailable) as info:
        sampler_for("cuda:0")
    message = str(info.value)
    assert "\n" not in message and "NVML" in message and "NVIDIA driver" in message


@pytest.mark.skipif(shutil.which("xpu-smi") is not None, reason="this machine has xpu-smi")
def test_xpu_without_xpu_smi_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DeviceNotAvailable) as info:
        sampler_for("xpu:0")
    message = str(info.value)
    assert "\n" not in message and "xpu-smi is not installed" in message and "Intel XPU Manager" in message


@pytest.mark.skipif(sys.platform == "darwin", reason="MPS may exist here")
def test_mps_elsewhere_is_one_clear_error():
    with pytest.raises(DeviceNotAvailable, match="mps is not available"):
        sampler_for("mps")


def test_live_figures_cpu():
    figures = live_figures("cpu")
    assert figures["error"] is None and figures["device"] == "cpu" and figures["source"] == "psutil"
    assert figures["memory_used_mib"] + figures["memory_free_mib"] == pytest.approx(figures["memory_total_mib"])
    assert 0.0 <= figures["utilization"] <= 100.0


def test_live_figures_reports_an_error_instead_of_raising():
    figures = live_figures("tpu:3")
    assert figures["device"] == "tpu:3" and "Unknown device" in figures["error"]
    assert figures["memory_used_mib"] is None and figures["utilization"] is None


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda") == "cuda:0"
    expected = resolve_device(None)
    assert resolve_device("auto") == expected
    if expected == "cpu":
        with pytest.raises(DeviceNotAvailable, match="no CUDA or XPU device"):
            resolve_device("0")


@pytest.mark.parametrize(
    ("cuda_index", "visible", "expected"),
    [
        (0, None, 0),
        (2, None, 2),
        (0, "2", 2),
        (1, "2,0", 0),
        (0, " 1 , 2 ", 1),
        (0, "GPU-cccc", 2),  # a unique UUID prefix, as CUDA accepts
        (1, "GPU-bbbb2222-0000,0", 0),
    ],
)
def test_nvml_index_follows_cuda_visible_devices(cuda_index, visible, expected):
    assert nvml_index_for(cuda_index, visible, UUIDS) == expected


@pytest.mark.parametrize(
    ("cuda_index", "visible"),
    [
        (3, None),  # only three GPUs
        (0, ""),  # all hidden
        (1, "1,7,2"),  # CUDA stops at the first entry naming no GPU: only cuda:0 exists
        (0, "GPU-"),  # an ambiguous prefix
        (0, "MIG-1234"),  # MIG slices are not mapped
    ],
)
def test_nvml_index_of_an_invisible_gpu_is_a_clear_error(cuda_index, visible):
    with pytest.raises(DeviceNotAvailable, match=f"cuda:{cuda_index} does not exist here"):
        nvml_index_for(cuda_index, visible, UUIDS)


def test_importing_telemetry_does_no_work():
    code = (
        "import sys, sdplay.telemetry, sdplay.telemetry.intel, sdplay.telemetry.nvidia\n"
        "print(sorted(m for m in ('torch', 'pynvml', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
