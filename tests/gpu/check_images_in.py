"""GPU timing of image-to-image and inpainting at native sizes, sdplay beside diffusers' own pipelines.

Run on a CUDA machine: `python tests/gpu/check_images_in.py [sd-v1-4 sd-v2-1 sdxl-base-1.0]`; writes
$OUT/images_in.json when OUT is set. Random full-size weights in fp16 (fp32 VAE for SDXL, as sdplay loads it),
one image, CHECK_STEPS steps (default 20) at strength 0.75 / inpainting strength 1.0. For each task: sdplay's
per-phase times (text, denoise, decode) over REPEATS runs (median), and diffusers' AutoPipelineForImage2Image /
AutoPipelineForInpainting created with `from_pipe` over the same modules, timed end to end, in the same process.
Every output must be finite and of the native size.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # runs from a checkout too

import numpy as np
import torch
from PIL import Image

from sdplay import catalog
from sdplay.engine import Engine
from sdplay.types import GenerationRequest

REPEATS = int(os.environ.get("CHECK_REPEATS", "3"))
STEPS = int(os.environ.get("CHECK_STEPS", "20"))


def inputs(size: int) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = Image.new("L", (size, size))
    mask.paste(255, (0, 0, size // 2, size))
    return image, mask


def sdplay_times(engine: Engine, req: GenerationRequest) -> dict:
    runs = []
    for _ in range(REPEATS + 1):  # the first run warms up (and compiles, with the fast path)
        res = engine.generate(req)
        runs.append(res.timings)
        assert res.images[0].size == (req.width, req.height)
    timed = runs[1:]
    return {
        phase: statistics.median(getattr(t, phase) for t in timed)
        for phase in ("text_encoding", "denoising", "decoding", "total")
    }


def diffusers_time(pipe, **kwargs) -> float:
    times = []
    for k in range(REPEATS + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(k), output_type="np").images
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert np.isfinite(out).all()
    return statistics.median(times[1:])


def check(model: str) -> dict:
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    spec = catalog.resolve(model)
    size = spec.native_size
    engine = Engine(random_weights=True, max_models=1)
    image, mask = inputs(size)
    base = {"prompt": "a red heart on a white table", "model": model, "steps": STEPS, "seed": 1, "device": "cuda",
            "dtype": "fp16", "width": size, "height": size}  # fmt: skip
    report = {"size": size, "steps": STEPS}
    report["sdplay_img2img"] = sdplay_times(engine, GenerationRequest(**base, init_image=image, strength=0.75))
    report["sdplay_inpaint"] = sdplay_times(
        engine, GenerationRequest(**base, init_image=image, mask=mask, strength=1.0)
    )
    loaded = engine.load(model, "cuda", "fp16")[0]
    common = {"prompt": base["prompt"], "num_inference_steps": STEPS, "height": size, "width": size}
    img2img = AutoPipelineForImage2Image.from_pipe(loaded.pipe)
    report["diffusers_img2img_total"] = diffusers_time(img2img, image=image, strength=0.75, **common)
    inpaint = AutoPipelineForInpainting.from_pipe(loaded.pipe)
    report["diffusers_inpaint_total"] = diffusers_time(inpaint, image=image, mask_image=mask, strength=1.0, **common)
    report["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    engine.unload()
    return report


def main() -> int:
    models = sys.argv[1:] or ["sd-v1-4", "sd-v2-1", "sdxl-base-1.0"]
    report = {}
    for name in models:  # each model's figures are printed as soon as they exist
        report[name] = check(name)
        print(json.dumps({name: report[name]}), flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "images_in.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
