"""The long-lived `xpu-smi dump` reader, driven by a stand-in `xpu-smi` that replays the seed's real output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdplay.errors import DeviceNotAvailable
from sdplay.telemetry import record, resolve_device, sampler_for
from sdplay.telemetry.factory import close_shared_samplers
from sdplay.telemetry.intel import XpuSmiSampler

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "seed-device-outputs.txt"

# Replays the reference `xpu-smi dump -d 0 -m 0,5,18` output line by line, then keeps printing rows
# whose utilisation counts up (1.00, 2.00, ...) until it is killed, like the real long-lived dump.
FAKE_XPU_SMI = """\
import os, sys, time
with open(os.environ["FAKE_XPU_SMI_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
mode = os.environ.get("FAKE_XPU_SMI_MODE", "stream")
if mode == "fail":
    print("Error: device 7 not found", flush=True)
    sys.exit(1)
text = open(os.environ["FAKE_XPU_SMI_REFERENCE"]).read()
reference = text.split("$ xpu-smi dump -d 0 -m 0,5,18\\n", 1)[1]
for line in reference.splitlines():
    print(line, flush=True)
    time.sleep(0.02)
if mode == "malformed":
    print("13:34:55.000,    0, oops, 0.05, 28.75", flush=True)
n = 0
while True:
    n += 1
    print(f"13:35:{n % 60:02d}.000,    0, {n:.2f}, 0.05, {28.75 + n:.2f}", flush=True)
    time.sleep(0.02)
"""


@pytest.fixture
def fake_xpu_smi(tmp_path, monkeypatch) -> Path:
    """A tmp dir holding an executable `xpu-smi`, put first on PATH; returns the file its calls are logged to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "xpu-smi"
    script.write_text(f"#!{sys.executable}\n{FAKE_XPU_SMI}")
    script.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_XPU_SMI_LOG", str(log))
    monkeypatch.setenv("FAKE_XPU_SMI_REFERENCE", str(FIXTURE))
    monkeypatch.delenv("FAKE_XPU_SMI_MODE", raising=False)
    yield log
    close_shared_samplers()


def wait_for_sample(sampler, condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        sample = sampler.sample()
        if condition(sample):
            return sample
        assert time.monotonic() < deadline, f"last sample: {sample}"
        time.sleep(0.01)


def test_one_long_lived_process_streams_rows(fake_xpu_smi):
    sampler = sampler_for("xpu:0")
    assert isinstance(sampler, XpuSmiSampler)
    try:
        first = sampler.sample()  # waits for the first row
        assert first.device == "xpu:0" and first.source == "xpu-smi"
        assert first.utilization in (0.02, 0.0) or first.utilization >= 1.0
        assert first.memory_used_mib >= 28.75 and first.memory_utilization == 0.05
        assert first.power_w is None and first.memory_total_mib is None  # not in this dump; no torch.xpu here
        later = wait_for_sample(sampler, lambda s: s.utilization >= 5.0)
        assert later.memory_used_mib == pytest.approx(28.75 + later.utilization)
        assert later.timestamp > first.timestamp
        assert sampler.process.poll() is None
    finally:
        sampler.close()
    assert fake_xpu_smi.read_text().splitlines() == ["dump -d 0 -m 0,5,18,1,2,3 -i 1"]  # started once
    assert sampler.process.poll() is not None  # close() ended it


def test_a_failing_xpu_smi_is_one_clear_error(fake_xpu_smi, monkeypatch):
    monkeypatch.setenv("FAKE_XPU_SMI_MODE", "fail")
    with XpuSmiSampler(7) as sampler, pytest.raises(DeviceNotAvailable) as info:
        sampler.sample()
    message = str(info.value)
    assert "exited with code 1" in message and "Error: device 7 not found" in message
    assert "xpu-smi discovery" in message and "\n" not in message


def test_a_malformed_row_is_skipped_with_one_warning(fake_xpu_smi, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_XPU_SMI_MODE", "malformed")
    with caplog.at_level(logging.WARNING, logger="sdplay.telemetry.intel"), XpuSmiSampler(0) as sampler:
        wait_for_sample(sampler, lambda s: s.utilization >= 3.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "oops" in warnings[0]


def test_record_on_xpu_through_the_shared_process(fake_xpu_smi):
    for _ in range(2):
        with record("xpu:0", interval=0.05) as trace:
            deadline = time.monotonic() + 20
            while len(trace.samples) < 2 or trace.samples[-1].utilization < 1.0:  # past the reference rows
                assert time.monotonic() < deadline, trace.samples
                time.sleep(0.01)
        summary = trace.summary()
        assert summary["device"] == "xpu:0" and summary["source"] == "xpu-smi" and summary["samples"] >= 2
        assert summary["utilization_peak"] >= 1.0 and summary["memory_used_peak_mib"] > 28.75
    assert len(fake_xpu_smi.read_text().splitlines()) == 1  # both traces used the one process


def test_index_and_default_resolve_to_xpu(fake_xpu_smi):
    if resolve_device(None).startswith("cuda"):
        pytest.skip("an NVIDIA GPU comes first here")
    assert resolve_device(None) == "xpu:0"
    assert resolve_device("2") == "xpu:2"


def test_monitor_command_reads_xpu_smi(fake_xpu_smi):
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "sdplay.cli.main", "monitor", "-d", "xpu:0", "-n", "3", "-i", "0.1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Timestamp, DeviceId, GPU Utilization (%), GPU Memory Utilization (%), GPU Memory Used (MiB)"
    assert len(lines) == 4 and all(", xpu:0, " in line and ", 0.05, " in line for line in lines[1:])
    assert fake_xpu_smi.read_text().splitlines() == ["dump -d 0 -m 0,5,18,1,2,3 -i 1"]
