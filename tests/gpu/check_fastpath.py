"""GPU check of the fast path against sdplay eager: UNet / VAE / text encoder relative error, same-seed PSNR.

Run on a CUDA machine: `python tests/gpu/check_fastpath.py [sd-v1-4 sd-v2-1 sdxl-base-1.0]`; writes
$OUT/fastpath_check.json when OUT is set. Random full-size weights in fp16 (the same seed for both), fresh random
inputs for every trial, a second UNet shape (another height) to exercise recapture. Passes when every
relative error is at most 1e-2 and every output is finite.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # runs from a checkout too

from sdplay import catalog
from sdplay.bench.exactness import compare
from sdplay.bench.variants import EAGER, FAST, Workload, build
from sdplay.devices import empty_cache, resolve_device

TOLERANCE = 1e-2


def check(model: str, steps: int) -> dict:
    spec = catalog.resolve(model)
    device = resolve_device("cuda:0")
    work = Workload(spec, "a red heart on a white table", spec.native_size, spec.native_size, steps,
                    spec.default_guidance, spec.default_sampler, "float16", True)  # fmt: skip
    eager, fast = build(EAGER, work, device), build(FAST, work, device)
    result = compare(eager, fast, work, seed=1)
    result["graphs"] = fast.pipe.sdplay_fast.stats()
    del eager, fast
    empty_cache(device)
    return result


def errors(result: dict) -> list[float]:
    return [u["rel_error"] for u in result["unet"]] + [result["vae"]["rel_error"], result["text_encoder"]["rel_error"]]


def main() -> int:
    models = sys.argv[1:] or ["sd-v1-4", "sd-v2-1", "sdxl-base-1.0"]
    steps = int(os.environ.get("CHECK_STEPS", "20"))
    report, ok = {"tolerance": TOLERANCE, "steps": steps, "models": {}}, True
    for model in models:
        res = check(model, steps)
        worst = max(errors(res), key=lambda e: math.inf if math.isnan(e) else e)
        res["pass"] = not math.isnan(worst) and worst <= TOLERANCE
        ok &= res["pass"]
        report["models"][model] = res
        print(f"{model}: worst relative error {worst:.2e}, image PSNR {res['image_psnr_db']:.1f} dB, "
              f"{'PASS' if res['pass'] else 'FAIL'}", flush=True)  # fmt: skip
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "fastpath_check.json").write_text(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
