"""First image after a restart: each variant in a fresh process (compile cache as left by the benchmark)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from sdplay.devices import DeviceInfo

MARK = "SDPLAY_RESTART_RESULT "


def restart_all(work: Any, cfg: Any, device: DeviceInfo, log: Any, results: dict | None = None,
                saved: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run every variant once in its own process; fills `results` with load, first and second image times."""
    results = {} if results is None else results
    chosen = cfg.restart_variants or [t for t in cfg.variants if "[" not in t]  # by default not the probes
    for text in chosen:
        cmd = [sys.executable, "-m", "sdplay.bench.restart", "--variant", text, "--device", device.id,
               "--model", work.spec.name if work.random_weights else str(work.spec.weights_dir or work.spec.name),
               "--work", json.dumps(_work_dict(work)), "--seed", str(cfg.seed)]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
        if proc.returncode or not lines:
            results[text] = {"error": (proc.stderr or proc.stdout)[-2000:]}
            log(f"[{work.spec.name}] restart {text}: failed")
            continue
        results[text] = json.loads(lines[-1][len(MARK) :]) | {"process_s": time.perf_counter() - started}
        if saved is not None:
            saved()
        r = results[text]
        log(f"[{work.spec.name}] restart {text}: load {r['load_s']:.1f} s, first image {r['first_image_s']:.2f} s")
    return results


def _work_dict(work: Any) -> dict[str, Any]:
    d = asdict(work)
    d.pop("spec")
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdplay.bench.restart")
    p.add_argument("--variant", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", required=True, help="the Workload fields other than spec, as JSON")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    print(MARK + json.dumps(measure(args.variant, args.model, args.device, json.loads(args.work), args.seed)))
    return 0


def measure(variant: str, model: str, device_name: str, work_fields: dict, seed: int) -> dict[str, Any]:
    """Build one variant, then time its first and second image; memory is this process's alone."""
    import torch

    from sdplay import catalog
    from sdplay.bench.probes import timed
    from sdplay.bench.variants import Workload, build
    from sdplay.devices import resolve_device

    started = time.perf_counter()
    device = resolve_device(device_name)
    work = Workload(spec=catalog.resolve(model), **work_fields)
    v = build(variant, work, device)
    cuda = device.kind == "cuda"
    if cuda:
        torch.cuda.empty_cache()  # drop the float32 staging of random initialisation
        torch.cuda.reset_peak_memory_stats()
    out = {"load_s": v.load_seconds, "first_image_s": timed(device, lambda: v.run(1, seed)),
           "second_image_s": timed(device, lambda: v.run(1, seed))}  # fmt: skip
    out["since_start_s"] = time.perf_counter() - started
    if cuda:
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
        out["peak_reserved"] = torch.cuda.max_memory_reserved()
    fast = getattr(v.pipe, "sdplay_fast", None)
    if fast is not None:
        out["graphs"] = fast.stats()
    return out


if __name__ == "__main__":
    sys.exit(main())
