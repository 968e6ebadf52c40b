"""What feature reuse (deepcache=N) costs in quality, on the one trained model here: sdplay-emoji on the CPU.

For each interval, the same prompts and seeds through the Engine with the fast path's feature reuse (no
compilation, no graphs on the CPU): retrieval top-1 / top-5 against the training images (the model's own
quality measure, `sdplay.training.evaluate`), PSNR against the images made without reuse, seconds per image.

    python benchmarks/deepcache_quality.py -n 128 --intervals 0,2,3,4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np


def generate(interval: int, prompts: list[str], steps: int, batch: int) -> tuple[np.ndarray, float]:
    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    os.environ["SDPLAY_FAST"] = f"compile=none,deepcache={interval}" if interval else "compile=none"
    engine = Engine(fast=True, max_models=1)
    make = [GenerationRequest(prompt=p, model="sdplay-emoji", seed=0, steps=steps) for p in prompts]
    engine.generate_batch(make[:1])  # load and warm up
    start, out = time.perf_counter(), []
    for i in range(0, len(make), batch):
        out += [np.asarray(r.images[0].convert("RGB")) for r in engine.generate_batch(make[i : i + batch])]
    return np.stack(out), (time.perf_counter() - start) / len(make)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> int:
    from sdplay.training.evaluate import eval_indices, load_set, score

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--intervals", default="0,2,3,4")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    data = load_set()
    prompts = [data.captions[i] for i in eval_indices(data, args.n)]
    rows, reference = [], None
    for interval in [int(x) for x in args.intervals.split(",")]:
        images, seconds = generate(interval, prompts, args.steps, args.batch)
        reference = images if reference is None else reference
        report = score(prompts, images, data)
        row = {"deepcache": interval, "n": args.n, "steps": args.steps, "top1": report.top1, "top5": report.top5,
               "psnr_vs_first_db": psnr(images, reference), "s_per_image": round(seconds, 4)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
