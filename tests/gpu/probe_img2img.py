"""Image-to-image and inpainting on CUDA under one fast-path configuration, each request twice, then txt2img.

    SDPLAY_FAST=compile=none CUDA_LAUNCH_BLOCKING=1 python tests/gpu/probe_img2img.py sd-v1-4

Prints one line per request (task, seconds, finite) or the error; exits 1 on the first failure. Used to find which
part of the fast path a failure needs (graphs, compile, text graphs, host timesteps)."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import numpy as np
from PIL import Image

from sdplay import catalog
from sdplay.engine import Engine
from sdplay.loading import LoadOptions
from sdplay.types import GenerationRequest


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "sd-v1-4"
    size = catalog.resolve(model).native_size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = Image.new("L", (size, size))
    mask.paste(255, (0, 0, size // 2, size))
    engine = Engine(LoadOptions(random_weights=True, fast_options=os.environ.get("SDPLAY_FAST", "")), max_models=1)
    base = {"prompt": "a red heart", "model": model, "steps": int(os.environ.get("STEPS", "8")), "seed": 1,
            "device": "cuda", "dtype": "fp16", "width": size, "height": size}  # fmt: skip
    cases = (
        [("img2img", {"init_image": image, "strength": 0.75})] * 2
        + [("inpaint", {"init_image": image, "mask": mask, "strength": 1.0})] * 2
        + [("txt2img", {})] * 2
    )
    for name, extra in cases:
        start = time.perf_counter()
        try:
            res = engine.generate(GenerationRequest(**base, **extra))
            arr = np.asarray(res.images[0])
            print(
                f"{os.environ.get('SDPLAY_FAST', 'default')!r} {name}: {time.perf_counter() - start:.2f} s, "
                f"std {arr.std():.1f}",
                flush=True,
            )
        except Exception as exc:
            print(f"{os.environ.get('SDPLAY_FAST', 'default')!r} {name}: FAILED {type(exc).__name__}: {exc}"[:300])
            traceback.print_exc(limit=-6)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
