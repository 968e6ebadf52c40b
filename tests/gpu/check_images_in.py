"""GPU timing of image-to-image and inpainting at native sizes, sdplay beside diffusers' own pipelines.

    python tests/gpu/check_images_in.py [MODEL ...] [--steps 20] [--repeats 3] [--fast] [--out DIR]
    python tests/gpu/check_images_in.py --tiny        # a smoke run on the CPU with tiny random models

Default models: sd-v1-4 (512), sd-v2-1 (768) and sdxl-base-1.0 (1024), random full-size weights in fp16 (the
SDXL VAE in fp32, as sdplay loads it), one image, 20 steps, image-to-image at strength 0.75 and inpainting (left
half masked) at strength 1.0. For each model and task, in the same process over the same modules:

- sdplay's per-phase times (text encoding, denoising including the init image's VAE encode, VAE decode, total);
- diffusers' own StableDiffusion(XL)Img2ImgPipeline / InpaintPipeline over the same modules (as `from_pipe` makes
  them, without its cast of every module to float32: sdplay.passes.over_same_modules): `encode_prompt`,
  the call with output_type="latent" less the text encoding (denoising), `vae.decode`, and the whole call.

Medians over REPEATS runs after one warm-up. Every output must be finite and of the native size, and sdplay's
inpainting must keep the unmasked half's pixels. sdplay's compiled fast path is off unless --fast, so both sides
run the same eager modules (tests/gpu/check_fastpath.py times the fast path). Writes images_in.json and
images_in.md to --out, else $OUT, else only prints. Meant to finish within about 4 minutes on one H200
(SDXL dominates); `--tiny` takes about 40 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout too
sys.path.insert(0, str(ROOT / "tests"))  # tiny.py, for --tiny

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sdplay import catalog  # noqa: E402
from sdplay.engine import Engine  # noqa: E402
from sdplay.passes import over_same_modules  # noqa: E402
from sdplay.types import GenerationRequest  # noqa: E402

MODELS = ("sd-v1-4", "sd-v2-1", "sdxl-base-1.0")
PROMPT = "a red heart on a white table"
PHASES = ("text_encoding", "denoising", "decoding", "total")


def inputs(width: int, height: int) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    mask = Image.new("L", (width, height))
    mask.paste(255, (0, 0, width // 2, height))
    return image, mask


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sdplay_times(engine: Engine, req: GenerationRequest, repeats: int, keep: np.ndarray | None) -> dict:
    runs = []
    for _ in range(repeats + 1):  # the first run warms up
        res = engine.generate(req)
        img = res.images[0]
        assert img.size == (req.width, req.height), img.size
        assert not res.metadata["warnings"], res.metadata["warnings"]
        if keep is not None:  # the unmasked right half (beyond the blurred edge) is the init image's
            edge = req.width // 2 + 4 * req.mask_blur
            assert np.array_equal(np.asarray(img)[:, edge:], keep[:, edge:]), "inpainting changed unmasked pixels"
        runs.append(res.timings)
    return {phase: statistics.median(getattr(t, phase) for t in runs[1:]) for phase in PHASES}


def diffusers_times(pipe, device: str, repeats: int, **kwargs) -> dict:
    """diffusers' own pipeline: encode_prompt, the latent call less it, vae.decode, and the whole call."""
    vae = pipe.vae
    out = {phase: [] for phase in PHASES}
    for k in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe.encode_prompt(prompt=kwargs["prompt"], device=pipe._execution_device, num_images_per_prompt=1,
                               do_classifier_free_guidance=True)  # fmt: skip
        sync(device)
        t1 = time.perf_counter()
        latents = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(k), output_type="latent").images
        sync(device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        sync(device)
        t3 = time.perf_counter()
        images = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(k), output_type="np").images
        sync(device)
        t4 = time.perf_counter()
        assert np.isfinite(images).all() and torch.isfinite(decoded).all()
        assert images.shape[1:3] == (kwargs["height"], kwargs["width"]), images.shape
        if k:  # the first run warms up
            for phase, value in zip(PHASES, (t1 - t0, max(0.0, t2 - t1 - (t1 - t0)), t3 - t2, t4 - t3), strict=True):
                out[phase].append(value)
    return {phase: statistics.median(values) for phase, values in out.items()}


def check(model: str, engine: Engine, device: str, dtype: str, steps: int, repeats: int, size: int | None) -> dict:
    import diffusers

    spec = catalog.resolve(model)
    width = height = size or spec.native_size
    image, mask = inputs(width, height)
    base = {"prompt": PROMPT, "model": model, "steps": steps, "seed": 1, "device": device, "dtype": dtype,
            "width": width, "height": height, "sampler": "Euler", "guidance": 7.0}  # fmt: skip
    started = time.perf_counter()
    loaded = engine.load(model, device, dtype)[0]
    report: dict = {"family": loaded.family.value, "size": f"{width}x{height}", "steps": steps,
                    "load_s": round(time.perf_counter() - started, 2)}  # fmt: skip
    img2img = GenerationRequest(**base, init_image=image, strength=0.75)
    inpaint = GenerationRequest(**base, init_image=image, mask=mask, strength=1.0)
    report["sdplay"] = {
        "img2img": sdplay_times(engine, img2img, repeats, None),
        "inpaint": sdplay_times(engine, inpaint, repeats, np.asarray(image)),
    }
    pipes = {task: over_same_modules(getattr(diffusers, loaded.family_spec.pipeline_class(task)), loaded.pipe)
             for task in ("img2img", "inpaint")}  # fmt: skip
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(loaded.scheduler_config)
    common = {"prompt": PROMPT, "num_inference_steps": steps, "guidance_scale": 7.0, "height": height, "width": width}
    common |= {"image": image}
    report["diffusers"] = {
        "img2img": diffusers_times(pipes["img2img"], device, repeats, strength=0.75, **common),
        "inpaint": diffusers_times(pipes["inpaint"], device, repeats, mask_image=mask, strength=1.0, **common),
    }
    for task in ("img2img", "inpaint"):
        report[f"{task}_total_ratio"] = round(report["sdplay"][task]["total"] / report["diffusers"][task]["total"], 3)
    if device.startswith("cuda"):
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    engine.unload()
    return report


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"# Images in: sdplay beside diffusers ({meta['device']}, {meta['dtype']}, {meta['steps']} steps)", "",
             f"`{meta['command']}`; medians of {meta['repeats']} runs after a warm-up; wall {meta['wall_s']} s; "
             f"fast path {'on' if meta['fast'] else 'off'}; torch {meta['torch']}, diffusers {meta['diffusers']}.", "",
             "| model | size | task | sdplay text / denoise / decode / total (s) | "
             "diffusers text / denoise / decode / total (s) | sdplay / diffusers |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in report["models"].items():
        for task in ("img2img", "inpaint"):
            ours, theirs = r["sdplay"][task], r["diffusers"][task]
            fmt = lambda t: " / ".join(f"{t[p]:.3f}" for p in PHASES)  # noqa: E731
            lines.append(f"| {name} | {r['size']} | {task} | {fmt(ours)} | {fmt(theirs)} | "
                         f"{r[f'{task}_total_ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def tiny_models(root: Path) -> list[str]:
    from tiny import make_tiny_folder

    return [str(make_tiny_folder(family, root / family)) for family in ("sd1", "sd2", "sdxl")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help=f"models (default: {' '.join(MODELS)})")
    ap.add_argument("--tiny", action="store_true", help="tiny random SD1/SD2/SDXL folders on the CPU, 64x64")
    ap.add_argument("--steps", type=int, default=None, help="steps (default 20; --tiny: 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up (default 3; --tiny: 1)")
    ap.add_argument("--fast", action="store_true", help="sdplay's compiled fast path on (CUDA)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for images_in.json and images_in.md")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory()
    if args.tiny:
        os.environ.setdefault("SDPLAY_CACHE", str(Path(tmp.name) / "cache"))
        device, dtype, size = "cpu", "fp32", 64
        models, engine = args.models or tiny_models(Path(tmp.name)), Engine(max_models=1, fast=False)
        steps, repeats = args.steps or 2, args.repeats or 1
    else:
        if not torch.cuda.is_available():
            print("No CUDA device: run with --tiny for a CPU smoke run.", file=sys.stderr)
            return 2
        device, dtype, size = "cuda", "fp16", None
        models = args.models or list(MODELS)
        engine = Engine(random_weights=True, max_models=1, fast=bool(args.fast))
        steps, repeats = args.steps or 20, args.repeats or 3
    import diffusers

    results = {Path(m).name: check(m, engine, device, dtype, steps, repeats, size) for m in models}
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    report = {"meta": {"device": name, "dtype": dtype, "steps": steps, "repeats": repeats, "fast": bool(args.fast),
                       "torch": torch.__version__, "diffusers": diffusers.__version__,
                       "command": "python tests/gpu/check_images_in.py " + " ".join(sys.argv[1:] if argv is None
                                                                                     else argv),
                       "wall_s": round(time.perf_counter() - started, 1)},
              "models": results}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    print(markdown(report))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "images_in.json").write_text(text)
        (out / "images_in.md").write_text(markdown(report))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
