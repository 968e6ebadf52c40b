"""xpu-smi dump and clinfo -l parsers, on the seed's real outputs and on malformed lines."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sdplay.telemetry.intel import parse_clinfo_list, parse_xpu_smi_dump, parse_xpu_smi_line

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "seed-device-outputs.txt"
SHARED = Path(__file__).resolve().parents[2] / "../shared/reference/seed-device-outputs.txt"
SOURCES = [FIXTURE, *([SHARED] if SHARED.exists() else [])]
HEADER = "Timestamp, DeviceId, GPU Utilization (%), GPU Memory Utilization (%), GPU Memory Used (MiB)"


def reference_outputs(path: Path) -> dict[str, str]:
    """Command -> its verbatim output, from a file of `$ command` blocks."""
    outputs: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("$ "):
            current = line[2:].strip()
            outputs[current] = []
        elif current is not None:
            outputs[current].append(line)
    return {command: "\n".join(lines).strip("\n") + "\n" for command, lines in outputs.items()}


def test_fixture_matches_the_shared_reference():
    if not SHARED.exists():
        pytest.skip("../shared is not beside the repository")
    assert reference_outputs(FIXTURE) == reference_outputs(SHARED)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.parent.name)
def test_xpu_smi_dump_reference_output(source, caplog):
    text = reference_outputs(source)["xpu-smi dump -d 0 -m 0,5,18"]
    assert "getpwuid error: Success" in text and "\n\nTimestamp" in text  # the quirks are in the input
    with caplog.at_level(logging.WARNING):
        rows = parse_xpu_smi_dump(text.splitlines(keepends=True))
    assert not caplog.records  # the getpwuid line and the blank line are not rows, and not errors
    assert [r.clock for r in rows] == ["13:34:51.000", "13:34:52.000", "13:34:53.000", "13:34:54.000"]
    assert {r.device_id for r in rows} == {0}
    assert rows[0].values == {"utilization": 0.02, "memory_utilization": 0.05, "memory_used_mib": 28.75}
    assert [r.values["utilization"] for r in rows] == [0.02, 0.0, 0.0, 0.0]


def test_xpu_smi_header_sets_columns_and_preamble_is_ignored():
    row, columns = parse_xpu_smi_line("getpwuid error: Success\n", None)
    assert row is None and columns is None
    row, columns = parse_xpu_smi_line(HEADER + "\n", None)
    assert row is None and columns == tuple(c.strip() for c in HEADER.split(","))
    row, same = parse_xpu_smi_line("\n", columns)
    assert row is None and same == columns


def test_xpu_smi_other_metrics_na_and_unmapped_columns():
    lines = [
        "Timestamp, DeviceId, GPU Utilization (%), GPU Power (W), GPU Frequency (MHz), GPU Memory Read (kB/s)",
        "06:14:46.000,    0, 0.00, 14.61,    0, 12.00",
        "06:14:47.000,    1, 97.50, N/A, 1550, N/A",
    ]
    rows = parse_xpu_smi_dump(lines)
    assert rows[0].values == {"utilization": 0.0, "power_w": 14.61, "sm_clock_mhz": 0.0}
    assert rows[1].device_id == 1
    assert rows[1].values == {"utilization": 97.5, "power_w": None, "sm_clock_mhz": 1550.0}


@pytest.mark.parametrize(
    "bad",
    [
        "13:34:55.000,    0, 0.00, 0.05",  # a field short
        "13:34:55.000,    0, 0.00, 0.05, 28.75, 1.0",  # a field too many
        "13:34:55.000,    0, busy, 0.05, 28.75",  # not a number
        "yesterday,    0, 0.00, 0.05, 28.75",  # not a clock time
        "13:34:55.000, gpu0, 0.00, 0.05, 28.75",  # device id not a number
        "\x00\x00garbage",
    ],
)
def test_malformed_xpu_smi_line_is_skipped_with_one_warning(bad, caplog):
    lines = [HEADER, "13:34:51.000,    0, 0.02, 0.05, 28.75", bad, "13:34:52.000,    0, 1.00, 0.05, 30.00"]
    with caplog.at_level(logging.WARNING, logger="sdplay.telemetry.intel"):
        rows = parse_xpu_smi_dump(lines)
    assert [r.clock for r in rows] == ["13:34:51.000", "13:34:52.000"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "malformed xpu-smi line" in warnings[0].getMessage()
    with pytest.raises(ValueError):
        parse_xpu_smi_line(bad, tuple(c.strip() for c in HEADER.split(",")))


def test_rows_before_any_header_are_not_parsed():
    assert parse_xpu_smi_dump(["13:34:51.000,    0, 0.02, 0.05, 28.75"]) == []


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.parent.name)
def test_clinfo_list_reference_output(source):
    platforms = parse_clinfo_list(reference_outputs(source)["clinfo -l"])
    assert len(platforms) == 1
    assert (platforms[0].index, platforms[0].name) == (0, "Intel(R) OpenCL Graphics")
    assert platforms[0].devices == ("Intel(R) Data Center GPU Max 1100",) * 4


def test_clinfo_two_platforms_and_malformed_lines(caplog):
    text = (
        "Platform #0: Intel(R) OpenCL Graphics\n"
        " `-- Device #0: Intel(R) Arc(TM) A770 Graphics\n"
        "some banner nobody expected\n"
        "Platform #1: Portable Computing Language\n"
        " `-- Device #0: cpu-haswell-AMD EPYC\n"
    )
    with caplog.at_level(logging.WARNING):
        platforms = parse_clinfo_list(text)
    assert [p.name for p in platforms] == ["Intel(R) OpenCL Graphics", "Portable Computing Language"]
    assert [p.devices for p in platforms] == [("Intel(R) Arc(TM) A770 Graphics",), ("cpu-haswell-AMD EPYC",)]
    assert len(caplog.records) == 1 and "some banner" in caplog.records[0].getMessage()
    assert parse_clinfo_list("") == []
