"""Intel GPUs: one long-lived `xpu-smi dump` read line by line, and the `clinfo -l` device tree."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sdplay.errors import DeviceNotAvailable
from sdplay.telemetry.sample import METRICS, MIB, Sampler, TelemetrySample

log = logging.getLogger(__name__)

XPU_SMI_FIELDS = {m.label: m.field for m in METRICS if m.xpu_smi_id is not None}
DEFAULT_XPU_SMI_METRICS = (0, 5, 18, 1, 2, 3)  # the seed's 0,5,18 first, then power, frequency, temperature
_CLOCK = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d+)?")
_PLATFORM = re.compile(r"Platform #(\d+): (.+)")
_DEVICE = re.compile(r"\s*[+`|\\]-- Device #(\d+): (.+)")


@dataclass(frozen=True)
class XpuSmiRow:
    """One data line of `xpu-smi dump`: its clock time, device id and the mapped metric values."""

    clock: str  # "13:34:51.000", the time of day xpu-smi printed
    device_id: int
    values: dict[str, float | None]  # TelemetrySample field -> value; None where xpu-smi printed N/A


def parse_xpu_smi_line(line: str, columns: tuple[str, ...] | None) -> tuple[XpuSmiRow | None, tuple[str, ...] | None]:
    """Feed one output line; return (row or None, the columns in force). Raise ValueError on a malformed row.

    Lines before the `Timestamp, DeviceId, ...` header (such as `getpwuid error: Success`) and blank
    lines are not rows; columns sdplay does not map (e.g. `GPU Memory Read (kB/s)`) are ignored.
    """
    cells = [cell.strip() for cell in line.strip().split(",")]
    if cells[:2] == ["Timestamp", "DeviceId"]:
        return None, tuple(cells)
    if columns is None or not line.strip():
        return None, columns
    if len(cells) != len(columns):
        raise ValueError(f"{len(cells)} fields where the header has {len(columns)}")
    if not _CLOCK.fullmatch(cells[0]):
        raise ValueError(f"timestamp {cells[0]!r} is not HH:MM:SS.mmm")
    values: dict[str, float | None] = {}
    for name, cell in zip(columns[2:], cells[2:], strict=True):
        if name in XPU_SMI_FIELDS:
            values[XPU_SMI_FIELDS[name]] = None if cell in ("", "N/A") else float(cell)
    return XpuSmiRow(cells[0], int(cells[1]), values), columns


def parse_xpu_smi_dump(lines: Iterable[str]) -> list[XpuSmiRow]:
    """All rows of an `xpu-smi dump` output; each malformed row is skipped with one warning."""
    rows, columns = [], None
    for line in lines:
        try:
            row, columns = parse_xpu_smi_line(line, columns)
        except ValueError as exc:
            log.warning("skipping malformed xpu-smi line %r: %s", line.rstrip("\n"), exc)
            continue
        if row is not None:
            rows.append(row)
    return rows


@dataclass(frozen=True)
class OpenClPlatform:
    """One platform of `clinfo -l` with the names of its devices, in order."""

    index: int
    name: str
    devices: tuple[str, ...]


def parse_clinfo_list(text: str) -> list[OpenClPlatform]:
    """The platform/device tree printed by `clinfo -l`; unrecognised lines are skipped with a warning."""
    platforms: list[OpenClPlatform] = []
    for line in text.splitlines():
        if match := _PLATFORM.fullmatch(line.strip()):
            platforms.append(OpenClPlatform(int(match[1]), match[2].strip(), ()))
        elif (match := _DEVICE.fullmatch(line.rstrip())) and platforms:
            last = platforms[-1]
            platforms[-1] = OpenClPlatform(last.index, last.name, (*last.devices, match[2].strip()))
        elif line.strip():
            log.warning("skipping unrecognised clinfo line %r", line)
    return platforms


def opencl_platforms(timeout_s: float = 10.0) -> list[OpenClPlatform]:
    """Run `clinfo -l` if it is installed; [] when it is not, or fails."""
    if shutil.which("clinfo") is None:
        return []
    try:
        done = subprocess.run(["clinfo", "-l"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("clinfo -l failed: %s", exc)
        return []
    return parse_clinfo_list(done.stdout)


class XpuSmiSampler(Sampler):
    """Starts `xpu-smi dump` once and keeps its latest row; a reader thread parses the stream."""

    source = "xpu-smi"

    def __init__(
        self,
        index: int = 0,
        metrics: Iterable[int] = DEFAULT_XPU_SMI_METRICS,
        interval_s: float = 1.0,
        executable: str = "xpu-smi",
        first_reading_timeout_s: float = 15.0,
    ) -> None:
        self.device = f"xpu:{index}"
        ids = ",".join(map(str, metrics))
        self.command = [executable, "dump", "-d", str(index), "-m", ids, "-i", str(max(1, round(interval_s)))]
        self._timeout = first_reading_timeout_s
        self._total_mib = _torch_xpu_total_mib(index)
        self._cond = threading.Condition()
        self._latest: TelemetrySample | None = None
        self._eof = False
        self._other_lines: deque[str] = deque(maxlen=3)  # what xpu-smi said besides rows, for errors
        try:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
            )
        except OSError as exc:
            raise DeviceNotAvailable(f"cannot start {executable}: {exc}.", hint="Install Intel XPU Manager.") from exc
        self._reader = threading.Thread(target=self._read, name=f"sdplay-xpu-smi-{index}", daemon=True)
        self._reader.start()

    def sample(self) -> TelemetrySample:
        """The latest row; waits for the first one (xpu-smi prints one per interval)."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._eof, self._timeout)
            if self._latest is not None and not self._eof:
                return self._latest
        if self._eof:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)
        with self._cond:
            said = " / ".join(self._other_lines) or "nothing"
        code = self.process.poll()
        state = f"exited with code {code}" if code is not None else "printed no row"
        raise DeviceNotAvailable(
            f"`{' '.join(self.command)}` {state}; it said: {said}.",
            hint=f"Check that `xpu-smi discovery` lists device {self.device.split(':')[1]}.",
        )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=3)
        if self.process.stdout:
            self.process.stdout.close()

    def _read(self) -> None:
        columns, warned = None, False
        for line in self.process.stdout or ():
            try:
                row, columns = parse_xpu_smi_line(line, columns)
            except ValueError as exc:
                level = logging.DEBUG if warned else logging.WARNING
                log.log(level, "skipping malformed xpu-smi line %r: %s", line.rstrip("\n"), exc)
                warned = True
                continue
            if row is None:
                if line.strip() and not line.startswith("Timestamp"):
                    with self._cond:
                        self._other_lines.append(line.strip())
                continue
            with self._cond:
                self._latest = self._to_sample(row)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _to_sample(self, row: XpuSmiRow) -> TelemetrySample:
        used = row.values.get("memory_used_mib")
        return TelemetrySample(
            timestamp=time.time(),
            device=self.device,
            utilization=row.values.get("utilization"),
            memory_used_mib=used,
            memory_total_mib=self._total_mib,
            memory_utilization=row.values.get("memory_utilization"),
            power_w=row.values.get("power_w"),
            temperature_c=row.values.get("temperature_c"),
            sm_clock_mhz=row.values.get("sm_clock_mhz"),
            source=self.source,
        )


def _torch_xpu_total_mib(index: int) -> float | None:
    """Device memory size from torch.xpu when torch is already loaded with XPU support (xpu-smi dump lacks it)."""
    torch = sys.modules.get("torch")
    xpu = getattr(torch, "xpu", None)
    try:
        return xpu.get_device_properties(index).total_memory / MIB if xpu and xpu.is_available() else None
    except (RuntimeError, AssertionError, AttributeError):
        return None
