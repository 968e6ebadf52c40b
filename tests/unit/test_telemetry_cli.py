"""`sdplay monitor` as a real subprocess on cpu: formats, errors, Ctrl-C and a closed pipe."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest

from sdplay.cli.monitor import parse_metrics
from sdplay.errors import InvalidRequest

REPO = Path(__file__).resolve().parents[2]
ENV = os.environ | {"PYTHONPATH": str(REPO / "src")}
# The seed's xpu-smi columns, in words that fit the CPU and host memory.
SEED_HEADER = "Timestamp, DeviceId, CPU Utilization (%), Memory Utilization (%), Memory Used (MiB)"
GPU_HEADER = "Timestamp, DeviceId, GPU Utilization (%), GPU Memory Utilization (%), GPU Memory Used (MiB)"
CSV_ROW = re.compile(r"\d{2}:\d{2}:\d{2}\.\d{3},   cpu, \d+\.\d{2}, \d+\.\d{2}, \d+\.\d{2}")


def monitor(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sdplay.cli.main", "monitor", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def start(*args: str) -> subprocess.Popen:
    """The monitor as a terminal starts it: SIGINT at its default even where this test runs as a background job
    (a shell without job control starts those with SIGINT ignored, and Python then keeps ignoring it)."""
    command = [sys.executable, "-m", "sdplay.cli.main", "monitor", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=_default_sigint)  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_csv_in_the_seed_shape():
    done = monitor("-d", "cpu", "-n", "3", "-i", "0.1", "--format", "csv")
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == SEED_HEADER and len(lines) == 4
    assert all(CSV_ROW.fullmatch(line) for line in lines[1:]), lines
    times = [datetime.strptime(line.split(",")[0], "%H:%M:%S.%f") for line in lines[1:]]
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    assert all(0.05 < gap < 1.0 for gap in gaps), gaps


FIELDS = {"utilization", "memory_used_mib", "memory_total_mib", "power_w"}


def test_json_lines():
    done = monitor("-d", "cpu", "-n", "3", "-i", "0.1", "--format", "json", "-m", "util,mem_used,mem_total,power")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3
    for record in records:
        assert set(record) == {"timestamp", "device", "source"} | FIELDS
        assert record["device"] == "cpu" and record["source"] == "psutil" and record["power_w"] is None
        assert 0 < record["memory_used_mib"] < record["memory_total_mib"]
        datetime.fromisoformat(record["timestamp"])


def test_table():
    done = monitor("-d", "cpu", "-n", "3", "-i", "0.1", "--format", "table", "-m", "util,temp")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["time", "device", "util", "%", "temp", "C"]
    assert len(rows) == 3 and all(row.split()[1:] and row.split()[1] == "cpu" for row in rows)
    assert all(row.split()[-1] == "N/A" for row in rows)
    assert len({len(row) for row in [header, *rows]}) == 1  # aligned


def test_xpu_smi_numeric_ids_and_default_device():
    from sdplay.telemetry import default_device

    done = monitor("-m", "0,5,18", "-n", "1", "-i", "0.1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (SEED_HEADER if default_device() == "cpu" else GPU_HEADER)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-d", "tpu"], "error: Unknown device 'tpu'"),
        (["-d", "mps"], "error: mps is not available"),
        (["-d", "cpu", "-m", "util,fan"], "error: Unknown metric 'fan'"),
        (["-d", "cpu", "-i", "0"], "error: --interval must be positive"),
        (["-d", "cpu", "-n", "0"], "error: --count must be at least 1"),
    ],
)
def test_errors_are_one_clear_line(args, expected):
    done = monitor(*args, "-n", "1") if "-n" not in args else monitor(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr


def test_missing_vendor_driver_is_one_clear_line():
    if subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has an NVIDIA driver")
    done = monitor("-d", "cuda:0", "-n", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "NVIDIA driver" in done.stderr


def test_ctrl_c_stops_cleanly():
    proc = start("-d", "cpu", "-i", "0.05")
    try:
        assert proc.stdout.readline().startswith("Timestamp")
        assert CSV_ROW.fullmatch(proc.stdout.readline().strip())  # lines arrive as they are printed
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and stderr == ""


def test_closed_pipe_stops_cleanly():
    proc = start("-d", "cpu", "-i", "0.02")
    try:
        assert proc.stdout.readline().startswith("Timestamp")
        proc.stdout.close()  # like `sdplay monitor | head -n 1`
        proc.wait(timeout=20)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 0 and stderr == ""


def test_parse_metrics():
    assert [m.name for m in parse_metrics("0,5,18")] == ["util", "mem_util", "mem_used"]
    assert [m.field for m in parse_metrics(" power , 3,clock,mem_total")] == [
        "power_w",
        "temperature_c",
        "sm_clock_mhz",
        "memory_total_mib",
    ]
    for bad in ("", "4", "util,,gpu"):
        with pytest.raises(InvalidRequest):
            parse_metrics(bad)
