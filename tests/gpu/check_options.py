"""GPU check of the opt-in fast-path options: feature reuse under CUDA graphs, float8 linear layers.

`python tests/gpu/check_options.py [model]` (default sd-v1-4) on a CUDA machine; writes $OUT/options_check.json
when OUT is set. Without compilation, so it runs in seconds:
- deepcache=3 with CUDA graphs against deepcache=3 without graphs (same weights): the graphs of full and cached steps
  must read and write the same feature buffers, so the images must agree to fp16 rounding (PSNR >= 40 dB), and the
  schedule must have run cached steps;
- fp8=true: UNet relative error and same-seed PSNR against sdplay eager (reported: this is the option's cost).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # runs from a checkout too

from sdplay import catalog
from sdplay.bench.exactness import compare
from sdplay.bench.variants import EAGER, Workload, build
from sdplay.devices import empty_cache, resolve_device

MIN_PSNR = 40.0


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "sd-v1-4"
    spec = catalog.resolve(model)
    device = resolve_device("cuda:0")
    work = Workload(spec, "a red heart on a white table", spec.native_size, spec.native_size, 20,
                    spec.default_guidance, spec.default_sampler, "float16", True)  # fmt: skip
    graphed = build("sdplay-fast[compile=none,deepcache=3]", work, device)
    plain = build("sdplay-fast[compile=none,graphs=false,deepcache=3]", work, device)
    reuse = compare(plain, graphed, work, seed=1, modules=False)
    reuse["graphs"] = graphed.pipe.sdplay_fast.stats()
    reuse["pass"] = reuse["image_psnr_db"] >= MIN_PSNR and reuse["graphs"]["deepcache"]["cached_steps"] > 0
    print(f"deepcache graphs vs no graphs: PSNR {reuse['image_psnr_db']:.1f} dB, "
          f"{reuse['graphs']['deepcache']}: {'PASS' if reuse['pass'] else 'FAIL'}", flush=True)  # fmt: skip
    del graphed, plain
    empty_cache(device)
    eager = build(EAGER, work, device)
    fp8 = build("sdplay-fast[compile=none,fp8=true]", work, device)
    cost = compare(eager, fp8, work, seed=1)
    cost["setup"] = fp8.setup["optimisation"].get("fast_path", {}).get("fp8_linear_layers")
    print(f"fp8 vs eager: UNet rel. error {cost['unet'][0]['rel_error']:.2e}, PSNR {cost['image_psnr_db']:.1f} dB, "
          f"linear layers: {cost['setup']}", flush=True)  # fmt: skip
    if os.environ.get("OUT"):
        report = {"model": model, "deepcache_graphs_vs_eager": reuse, "fp8_vs_eager": cost}
        Path(os.environ["OUT"], "options_check.json").write_text(json.dumps(report, indent=2, default=str))
    return 0 if reuse["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
