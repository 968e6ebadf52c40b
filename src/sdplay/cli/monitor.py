"""`sdplay monitor`: print device utilisation and memory at an interval, like `xpu-smi dump`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from sdplay.errors import InvalidRequest
from sdplay.telemetry.sample import METRICS, Metric, TelemetrySample

if TYPE_CHECKING:
    from sdplay.telemetry.sample import Sampler

DEFAULT_METRICS = "util,mem_util,mem_used"
Writer = Callable[[TelemetrySample], None]


def register(sub: argparse._SubParsersAction) -> None:
    names = ", ".join(f"{m.name}" + (f" ({m.xpu_smi_id})" if m.xpu_smi_id is not None else "") for m in METRICS)
    parser = sub.add_parser(
        "monitor",
        help="print device utilisation and memory every interval",
        description="Print device telemetry every interval until Ctrl-C, like `xpu-smi dump -d 0 -m 0,5,18`.",
    )
    device_help = "cuda:N, xpu:N, mps, cpu or an accelerator index (default: the first accelerator, else cpu)"
    parser.add_argument("-d", "--device", help=device_help)
    metrics_help = f"comma-separated names or xpu-smi ids: {names} (default: %(default)s)"
    parser.add_argument("-m", "--metrics", default=DEFAULT_METRICS, help=metrics_help)
    parser.add_argument("-i", "--interval", type=float, default=1.0, help="seconds between readings (default: 1)")
    parser.add_argument("-n", "--count", type=int, help="stop after this many readings (default: never)")
    parser.add_argument("--format", choices=("csv", "json", "table"), default="csv", help="default: csv")
    parser.set_defaults(func=run)


def parse_metrics(text: str) -> list[Metric]:
    """Metrics from 'util,mem_used' or xpu-smi ids '0,5,18' (mixed is fine), in the order given."""
    by_key = {m.name: m for m in METRICS} | {str(m.xpu_smi_id): m for m in METRICS if m.xpu_smi_id is not None}
    metrics = []
    for key in (k.strip().lower() for k in text.split(",") if k.strip()):
        if key not in by_key:
            known = ", ".join(by_key)
            raise InvalidRequest(f"Unknown metric {key!r}.", field="metrics", hint=f"Choose from: {known}.")
        metrics.append(by_key[key])
    if not metrics:
        raise InvalidRequest("No metric given.", field="metrics", hint=f"For example: -m {DEFAULT_METRICS}")
    return metrics


def run(args: argparse.Namespace) -> int:
    metrics = parse_metrics(args.metrics)
    if not args.interval > 0:
        raise InvalidRequest(f"--interval must be positive, got {args.interval}.", field="interval")
    if args.count is not None and args.count < 1:
        raise InvalidRequest(f"--count must be at least 1, got {args.count}.", field="count")
    from sdplay.telemetry.factory import resolve_device, sampler_for

    device = resolve_device(args.device)
    sampler = sampler_for(device, interval=args.interval)
    try:
        write = WRITERS[args.format](metrics, sys.stdout, device)
        _loop(sampler, write, args.interval, args.count)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        sampler.close()
    return 0


def _loop(sampler: Sampler, write: Writer, interval: float, count: int | None) -> None:
    deadline, taken = time.monotonic(), 0
    while count is None or taken < count:
        write(sampler.sample())
        taken += 1
        if taken == count:
            return
        deadline += interval
        time.sleep(max(0.0, deadline - time.monotonic()))


def clock(timestamp: float) -> str:
    """'13:34:51.000', as xpu-smi prints its timestamps (local time)."""
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]


def _number(value: float | None) -> str:
    return "N/A" if value is None else f"{value:.2f}"


def column_label(metric: Metric, device: str = "") -> str:
    """xpu-smi's column name; on the CPU the same words for the CPU and host memory ("CPU Utilization (%)")."""
    if device != "cpu":
        return metric.label
    return metric.label.replace("GPU Memory", "Memory").replace("GPU", "CPU")


def csv_writer(metrics: list[Metric], out: TextIO, device: str = "") -> Writer:
    """xpu-smi's CSV: `Timestamp, DeviceId, GPU Utilization (%), ...`, one flushed line per reading."""
    print(", ".join(["Timestamp", "DeviceId", *(column_label(m, device) for m in metrics)]), file=out, flush=True)

    def write(s: TelemetrySample) -> None:
        cells = [clock(s.timestamp), f"{s.device:>5}", *(_number(getattr(s, m.field)) for m in metrics)]
        print(", ".join(cells), file=out, flush=True)

    return write


def json_writer(metrics: list[Metric], out: TextIO, device: str = "") -> Writer:
    """One JSON object per line: timestamp (ISO 8601), device, source and the chosen fields."""

    def write(s: TelemetrySample) -> None:
        record = {"timestamp": datetime.fromtimestamp(s.timestamp).astimezone().isoformat(timespec="milliseconds")}
        record |= {"device": s.device, "source": s.source} | {m.field: getattr(s, m.field) for m in metrics}
        print(json.dumps(record), file=out, flush=True)

    return write


def table_writer(metrics: list[Metric], out: TextIO, device: str = "") -> Writer:
    """Aligned columns under a header line."""
    widths = [max(10, len(m.heading)) for m in metrics]
    headings = (m.heading.rjust(w) for m, w in zip(metrics, widths, strict=True))
    print(f"{'time':<12}  {'device':<7} " + " ".join(headings), file=out, flush=True)

    def write(s: TelemetrySample) -> None:
        cells = (_number(getattr(s, m.field)).rjust(w) for m, w in zip(metrics, widths, strict=True))
        print(f"{clock(s.timestamp):<12}  {s.device:<7} " + " ".join(cells), file=out, flush=True)

    return write


WRITERS: dict[str, Callable[[list[Metric], TextIO, str], Writer]] = {
    "csv": csv_writer,
    "json": json_writer,
    "table": table_writer,
}
