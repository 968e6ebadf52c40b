"""GPU check of telemetry on cuda:0: utilisation under load, NVML memory against torch's allocator, energy.

Run on a CUDA machine: `python tests/gpu/check_telemetry.py`; writes $OUT/telemetry.json when OUT is set.

How memory is compared. NVML's "used" is device-wide: what other processes and the driver hold (the
baseline B, read before this process touches CUDA; NVML itself creates no CUDA context), plus what this
process holds: the blocks torch's caching allocator has reserved (R = torch.cuda.memory_reserved())
plus memory outside the allocator (O: CUDA context, loaded kernel modules, library handles). So
O = used - B - R. The check reads it at several points where R differs by gigabytes (after the
workload, after allocating 2 and then 6 GiB more, after freeing and emptying the cache): if NVML tracks
the allocator, O stays the same to within a few percent of this process's footprint R + O, and O itself
is a plausible context size (0 to 3 GiB).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # runs from a checkout too

import torch

from sdplay.telemetry import Monitor, summarize
from sdplay.telemetry.nvidia import NvmlSampler

DEVICE = "cuda:0"
WORKLOAD_S = 10.0
MIB = 2**20
GIB = 2**30


def engine_workload() -> tuple[str, Callable[[], int]]:
    """SD v1-4 with random weights at 512x512, warmed up; returns (description, one call -> images made)."""
    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    engine = Engine(random_weights=True)
    request = GenerationRequest(
        prompt="a red heart", model="sd-v1-4", width=512, height=512, steps=20, n_images=4, seed=1, device=DEVICE
    )
    engine.generate(request.with_(steps=2, n_images=1))  # warm-up: build, load, first kernels

    def step() -> int:
        return len(engine.generate(request).images)

    return "sdplay Engine(random_weights=True), sd-v1-4 512x512, 20 steps, 4 images per call", step


def matmul_workload() -> tuple[str, Callable[[], int]]:
    """fp16 8192x8192 matmuls; returns (description, one call -> matmuls done)."""
    a = torch.randn(8192, 8192, device=DEVICE, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=DEVICE, dtype=torch.float16)

    def step() -> int:
        nonlocal a
        for _ in range(20):
            a = (a @ b).clamp_(-1, 1)
        torch.cuda.synchronize()
        return 20

    step()
    return "fp16 8192x8192 matmuls", step


def prepare_workload() -> tuple[str, Callable[[], int]]:
    """The engine when it imports and runs, else matmuls."""
    try:
        return engine_workload()
    except ImportError as exc:
        print(f"engine not importable ({exc}); using matmuls")
    except Exception as exc:  # the check is about telemetry: say why, and still load the GPU
        print(f"engine failed ({type(exc).__name__}: {exc}); using matmuls")
    return matmul_workload()


def run_for(step: Callable[[], int], seconds: float) -> int:
    """Repeat `step` until `seconds` have passed; the units it reports, summed."""
    units, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        units += step()
    torch.cuda.synchronize()
    return units


def memory_point(sampler: NvmlSampler, baseline_mib: float, label: str) -> dict:
    """NVML used vs torch reserved now; overhead = used - baseline - reserved."""
    torch.cuda.synchronize()
    used = sampler.sample().memory_used_mib
    reserved = torch.cuda.memory_reserved() / MIB
    own = sampler.process_memory_mib()  # None where NVML lists host PIDs (containers)
    overhead = used - baseline_mib - reserved
    return {
        "label": label,
        "nvml_used_mib": used,
        "reserved_mib": reserved,
        "overhead_mib": overhead,
        "nvml_process_mib": own,
    }


def memory_points(sampler: NvmlSampler, baseline_mib: float) -> list[dict]:
    """Readings at reserved sizes gigabytes apart."""
    points = [memory_point(sampler, baseline_mib, "after workload")]
    extra = [torch.empty(2 * GIB, dtype=torch.uint8, device=DEVICE)]
    points.append(memory_point(sampler, baseline_mib, "+2 GiB"))
    extra.append(torch.empty(6 * GIB, dtype=torch.uint8, device=DEVICE))
    points.append(memory_point(sampler, baseline_mib, "+8 GiB"))
    del extra
    torch.cuda.empty_cache()
    points.append(memory_point(sampler, baseline_mib, "freed, cache emptied"))
    return points


def check(checks: dict, name: str, ok: bool, value: object, limit: str, required: bool = True) -> None:
    checks[name] = {"ok": bool(ok), "value": value, "limit": limit, "required": required}
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {value} ({limit}{'' if required else ', informative'})")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    sampler = NvmlSampler(0)
    # 1. Baseline before this process creates a CUDA context.
    baseline = sampler.sample().memory_used_mib
    torch.ones(1, device=DEVICE)
    context = memory_point(sampler, baseline, "context only")
    # 2. The warmed-up workload under a 0.2 s monitor, with the GPU's energy counter read around it.
    workload, step = prepare_workload()
    print(f"workload: {workload}, {WORKLOAD_S:.0f} s on {torch.cuda.get_device_name(0)}")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    monitor = Monitor(sampler, interval=0.2, maxlen=10_000)
    energy_before, started = sampler.energy_j(), time.time()
    monitor.start()
    units = run_for(step, WORKLOAD_S)
    monitor.stop()
    monitor.sample_now()
    energy_after, ended = sampler.energy_j(), time.time()
    samples = monitor.samples()
    summary = summarize(samples, ended - started)
    peak_reserved = torch.cuda.max_memory_reserved() / MIB
    # 3. Memory at several allocator sizes.
    points = memory_points(sampler, baseline)
    report = build_report(samples, summary, points, baseline, context, peak_reserved)
    report |= {"device": DEVICE, "gpu": torch.cuda.get_device_name(0), "nvml_index": sampler.nvml_index}
    report |= {"workload": workload, "workload_units": units, "torch": torch.__version__}
    add_energy(report, samples, energy_before, energy_after)
    sampler.close()
    write(report)
    return 0 if all(c["ok"] for c in report["checks"].values() if c["required"]) else 1


def build_report(samples, summary, points, baseline, context, peak_reserved) -> dict:
    """Print and collect the checks."""
    checks: dict = {}
    first = points[0]["overhead_mib"]
    check(checks, "peak utilisation", (summary["utilization_peak"] or 0) > 90, summary["utilization_peak"], "> 90 %")
    expected = int(0.8 * WORKLOAD_S / 0.2)
    check(checks, "samples", len(samples) >= expected, len(samples), f">= {expected} at 0.2 s over {WORKLOAD_S:.0f} s")
    check(checks, "context overhead O", 0 <= first <= 3 * 1024, round(first, 1), "0 to 3072 MiB")
    drift = max(abs(p["overhead_mib"] - first) / (p["reserved_mib"] + first) * 100 for p in points)
    check(checks, "O stable while reserved changes", drift <= 3.0, f"{drift:.2f} %", "<= 3 % of R + O")
    predicted_peak = baseline + peak_reserved + first
    peak = summary["memory_used_peak_mib"] or 0.0
    gap = abs(peak - predicted_peak) / (peak_reserved + first) * 100
    check(checks, "monitor peak vs B + max reserved + O", gap <= 5, f"{gap:.2f} %", "<= 5 %", required=False)
    for p in points:
        if p["nvml_process_mib"] is not None:
            own_gap = abs(p["nvml_process_mib"] - p["reserved_mib"] - first) / (p["reserved_mib"] + first) * 100
            check(checks, f"NVML per-process ({p['label']})", own_gap <= 3, f"{own_gap:.2f} %", "<= 3 %", False)
    return {
        "summary": summary,
        "baseline_mib": baseline,
        "context": context,
        "memory_points": points,
        "peak_reserved_mib": peak_reserved,
        "checks": checks,
    }


def add_energy(report: dict, samples: list, before: float | None, after: float | None) -> None:
    """Trapezoid energy of the power samples vs the GPU's own counter over the same span."""
    trapezoid = report["summary"]["energy_j"]
    if before is None or after is None or trapezoid is None:
        report["energy"] = {"trapezoid_j": trapezoid, "counter_j": None}
        return
    span = samples[-1].timestamp - samples[0].timestamp  # the counter is read just before and after these
    counter = after - before
    ratio = trapezoid / counter if counter else float("nan")
    report["energy"] = {"trapezoid_j": trapezoid, "counter_j": counter, "ratio": ratio, "span_s": span}
    check(
        report["checks"],
        "energy trapezoid / NVML counter",
        abs(ratio - 1) <= 0.15,
        f"{ratio:.3f}",
        "0.85 to 1.15",
        required=False,
    )


def write(report: dict) -> None:
    s = report["summary"]
    print(f"{report['gpu']}: {report['workload']} ({report['workload_units']} units)")
    print(
        f"samples {s['samples']}, util avg {s['utilization_avg']:.1f} % peak {s['utilization_peak']:.1f} %, "
        f"mem peak {s['memory_used_peak_mib']:.0f} MiB, power avg {s['power_avg_w'] or 0:.0f} W, "
        f"energy {s['energy_j'] or 0:.0f} J"
    )
    for p in report["memory_points"]:
        print(
            f"  {p['label']:<22} used {p['nvml_used_mib']:9.1f}  reserved {p['reserved_mib']:9.1f}  "
            f"O {p['overhead_mib']:7.1f} MiB"
        )
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "telemetry.json"
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
