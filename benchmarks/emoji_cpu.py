"""CPU speed of the embedded sdplay-emoji model: model load, then one 64x64 image at the default settings.

Warm-up runs first, then many timed runs; prints the median (and spread) and one JSON row.
Usage: python benchmarks/emoji_cpu.py [--runs 20] [--warmup 3] [--threads N] [--backend engine|diffusers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def engine_runner(steps: int | None):
    """(load, generate) through sdplay's Engine, as the CLI and server use it."""
    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    holder = {}

    def load():
        holder["engine"] = Engine()
        holder["engine"].load("sdplay-emoji", device="cpu")

    def generate(seed: int):
        request = GenerationRequest(prompt="red heart", model="sdplay-emoji", seed=seed, steps=steps, device="cpu")
        holder["engine"].generate(request)

    return load, generate


def diffusers_runner(steps: int | None):
    """(load, generate) with plain diffusers on the same folder, for comparison."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdplay.catalog import builtin

    spec = builtin("sdplay-emoji")
    holder = {}

    def load():
        pipe = StableDiffusionPipeline.from_pretrained(spec.weights_dir, dtype=torch.float32, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        holder["pipe"] = pipe

    def generate(seed: int):
        holder["pipe"](
            "red heart",
            num_inference_steps=steps or spec.default_steps,
            guidance_scale=spec.default_guidance,
            generator=torch.Generator().manual_seed(seed),
        )

    return load, generate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loads", type=int, default=3, help="timed model loads")
    parser.add_argument("--steps", type=int, default=None, help="default: the catalog's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--backend", choices=["engine", "diffusers"], default="engine")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sdplay.catalog import builtin

    spec = builtin("sdplay-emoji")
    load, generate = (engine_runner if args.backend == "engine" else diffusers_runner)(args.steps)
    # 1. Model load: the first includes reading the files cold(ish); the median of the rest is reported.
    loads = [timed(load) for _ in range(max(1, args.loads))]
    # 2. Warm-up, then timed runs, each with its own seed.
    for i in range(args.warmup):
        generate(i)
    runs = sorted(timed(lambda i=i: generate(1000 + i)) for i in range(args.runs))
    row = {
        "benchmark": "emoji_cpu",
        "backend": args.backend,
        "steps": args.steps or spec.default_steps,
        "sampler": spec.default_sampler,
        "guidance": spec.default_guidance,
        "size": spec.native_size,
        "load_s_first": round(loads[0], 3),
        "load_s_median": round(statistics.median(loads), 3),
        "image_s_median": round(statistics.median(runs), 3),
        "image_s_min": round(runs[0], 3),
        "image_s_max": round(runs[-1], 3),
        "runs": len(runs),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(
        f"sdplay-emoji on CPU ({row['torch_threads']} threads, {args.backend}): load {row['load_s_median']:.2f} s "
        f"(first {row['load_s_first']:.2f} s); one {row['size']}px image at {row['steps']} steps: "
        f"median {row['image_s_median']:.3f} s (min {row['image_s_min']:.3f}, max {row['image_s_max']:.3f}, "
        f"{row['runs']} runs); load average {row['load_average_1m']}"
    )
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
