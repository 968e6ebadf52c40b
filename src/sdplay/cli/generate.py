"""`sdplay generate`: prompt in, PNGs out, with a progress bar."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from sdplay.cli.common import add_load_options, human_bytes, load_options, parse_size, quiet_libraries


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a prompt", description="Generate images from a prompt.")
    p.add_argument("prompt")
    p.add_argument("--model", "-m", default=None, help="catalog name, hub id, diffusers folder or .safetensors file")
    p.add_argument("-n", "--n-images", type=int, default=1, help="how many images (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="images per UNet batch (default: all)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", "--cfg", type=float, default=None)
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's native size)")
    p.add_argument("--seed", type=int, default=-1, help="-1 draws one (recorded in the image)")
    p.add_argument("--sampler", default=None, help="e.g. 'Euler a', 'DPM++ 2M Karras' (see `sdplay models`)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, xpu, mps")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16")
    p.add_argument(
        "--clip-skip", type=int, default=None, help="A1111 clip skip: 2 = the text encoder's penultimate layer"
    )
    p.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="a LoRA of the LoRA folder (repeatable; as <lora:NAME:WEIGHT> in the prompt)")  # fmt: skip
    p.add_argument("--out", "-o", default="outputs", help="output folder (default ./outputs)")
    p.add_argument("--monitor", action="store_true", help="record device telemetry during the run")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_image_options(p)
    add_load_options(p)
    p.set_defaults(func=run)


def _add_image_options(p) -> None:
    g = p.add_argument_group("images in (image-to-image, inpainting, outpainting)")
    g.add_argument("--init-image", "-i", default=None, help="PNG, JPEG or WebP to start from (EXIF orientation kept)")
    g.add_argument("--strength", type=float, default=None, help="denoising strength 0..1 (default 0.75)")
    g.add_argument("--mask", default=None, help="mask image, white = repaint (the init image's size)")
    g.add_argument("--mask-blur", type=int, default=4, help="pixels of soft mask edge (default 4)")
    g.add_argument("--invert-mask", action="store_true", help="repaint the black of the mask instead")
    g.add_argument(
        "--masked-content", default="original", choices=("fill", "original", "latent noise", "latent nothing")
    )
    g.add_argument("--only-masked", action="store_true", help="inpaint a crop around the mask at full resolution")
    g.add_argument("--only-masked-padding", type=int, default=32, help="pixels around the mask's crop (default 32)")
    g.add_argument(
        "--resize-mode", default="just resize", choices=("just resize", "crop and resize", "resize and fill")
    )
    g.add_argument("--outpaint", default=None, help="extend the canvas: e.g. right=128,top=64 or all=64")
    h = p.add_argument_group("hires fix (text-to-image)")
    h.add_argument("--hires", type=float, default=None, metavar="SCALE", help="second pass at SCALE x the size")
    h.add_argument("--hires-size", default=None, help="second pass at WIDTHxHEIGHT instead of a scale")
    h.add_argument("--hires-upscaler", default="Latent", help="Latent, Latent (bicubic), ..., Lanczos")
    h.add_argument("--hires-steps", type=int, default=0, help="second-pass steps (default: as the first pass)")
    h.add_argument("--hires-strength", type=float, default=0.7, help="second-pass denoising strength (default 0.7)")
    r = p.add_argument_group("SDXL refiner")
    r.add_argument("--refiner", default=None, help="refiner model (catalog name, folder or file) for the last steps")
    r.add_argument("--refiner-switch-at", type=float, default=0.8, help="fraction of the steps before the refiner")


def _image_fields(args: argparse.Namespace) -> dict:
    """The image-input flags as request fields (files read and decoded safely)."""
    from sdplay.masking import parse_outpaint
    from sdplay.types import HiresFix

    fields: dict = {}
    if args.init_image:
        image = _read(args.init_image, "--init-image")
        fields |= {"init_image": image, "strength": args.strength, "mask_blur": args.mask_blur,
                   "mask_invert": args.invert_mask, "inpaint_fill": args.masked_content,
                   "inpaint_full_res": args.only_masked, "inpaint_padding": args.only_masked_padding,
                   "resize_mode": args.resize_mode}  # fmt: skip
        if args.mask:
            fields["mask"] = _read(args.mask, "--mask", mask_for=image.size)
        if args.outpaint:
            fields["outpaint"] = parse_outpaint(args.outpaint)
    elif args.mask or args.outpaint or args.strength is not None:
        from sdplay.errors import InvalidRequest

        raise InvalidRequest("--mask, --outpaint and --strength need --init-image.", field="init_image")
    if args.refiner:
        fields |= {"refiner": args.refiner, "refiner_switch_at": args.refiner_switch_at}
    if args.hires is not None or args.hires_size:
        w, h = parse_size(args.hires_size) if args.hires_size else (0, 0)
        fields["hires"] = HiresFix(scale=args.hires or 2.0, width=w or 0, height=h or 0, upscaler=args.hires_upscaler,
                                   steps=args.hires_steps, strength=args.hires_strength)  # fmt: skip
    return fields


def _read(path: str, flag: str, mask_for=None):
    from sdplay.errors import InvalidRequest
    from sdplay.image_input import MAX_INPUT_BYTES, decode_image, decode_mask

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InvalidRequest(f"Cannot read {flag} {path}: {exc.strerror or exc}.", field=flag) from exc
    return decode_mask(data, flag, size=mask_for) if mask_for else decode_image(data, flag)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    program = getattr(args, "program", False)  # the `sdplay` program, not a call of main() inside another
    if program:
        # Start-up (torch's import, the model) allocates about a million objects that live until the program
        # ends: no collection passes over them while they are made (0.2-0.3 s of CPU); at the first step they
        # are set aside for good (gc.freeze) and collection resumes.
        gc.disable()
    from sdplay import catalog
    from sdplay.images import ensure_writable, save_png
    from sdplay.modelfolder import CheckpointFolder
    from sdplay.samplers import get_sampler
    from sdplay.vocabulary import unknown_prompt_note

    request = request_from_args(args).validate()
    # Mistakes in the arguments are told before torch and diffusers are imported (seconds on a small CPU).
    if not CheckpointFolder(args.ckpt_dir, allow_pickle=args.allow_pickle).has(args.model):
        catalog.resolve(args.model, allow_pickle=args.allow_pickle)
    if args.sampler:
        get_sampler(args.sampler)
    out_dir = ensure_writable(Path(args.out))
    from sdplay.engine import Engine

    # The light runtime (same images, no diffusers or transformers to import) where it covers the request;
    # SDPLAY_LIGHT=0 always takes the full pipeline.
    options = replace(load_options(args), light=os.environ.get("SDPLAY_LIGHT", "1") != "0")
    engine = Engine(options, max_models=1)
    plan = engine.plan(request)
    light = engine.runs_light(plan)
    if not light:
        _hide_library_progress()
        from sdplay.accel.runtime import configure_torch

        configure_torch()  # process-wide torch settings, once, before any model loads
    with _Progress(plan.request, quiet=args.json, resume_gc=program) as progress:
        result = engine.generate(plan, on_step=progress.update, monitor=args.monitor)
    paths = [save_png(result, i, out_dir) for i in range(len(result.images))]
    _report(result, paths, args.json)
    note = None if plan.loras else unknown_prompt_note(request.prompt, request.model)  # a LoRA may teach new words
    if note:
        print(f"note: {note}", file=sys.stderr if args.json else sys.stdout)
    args.skip_teardown = program and light  # nothing of diffusers' to shut down: end at once (cli.main.entry)
    return 0


def request_from_args(args: argparse.Namespace):
    """The GenerationRequest the flags describe (the CLI's dialect; plan() resolves it)."""
    from sdplay.types import GenerationRequest

    width, height = parse_size(args.size)
    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative, model=args.model, n_images=args.n_images,
        batch_size=args.batch_size, steps=args.steps, guidance=args.guidance, width=width, height=height,
        seed=args.seed, sampler=args.sampler, device=args.device, dtype=args.dtype, clip_skip=args.clip_skip,
        loras=tuple(_lora_arg(a) for a in args.lora), **_image_fields(args),
    )  # fmt: skip


def _lora_arg(text: str):
    from sdplay.errors import InvalidRequest
    from sdplay.prompt_syntax import extract_loras

    _, refs = extract_loras(f"<lora:{text}>")
    if len(refs) != 1:
        raise InvalidRequest(f"--lora {text!r} is not NAME or NAME:WEIGHT.", field="loras", hint="e.g. --lora ink:0.8")
    return refs[0]


def _hide_library_progress() -> None:
    """sdplay draws its own bar; diffusers' per-component loading bars would interleave with it."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()


class _Progress:
    """A tqdm bar over all denoising steps of all batches, drawn from the first step on (so a load error
    is never preceded by an empty bar). With `resume_gc` the first step also ends start-up: what exists then is
    kept out of later garbage collections (gc.freeze) and collection resumes."""

    def __init__(self, request, quiet: bool, resume_gc: bool = False):
        self.request, self.quiet, self.resume_gc, self.bar = request, quiet, resume_gc, None

    def __enter__(self):
        return self

    def _start(self) -> None:
        from tqdm import tqdm

        req = self.request
        batches = -(-req.n_images // (req.batch_size or req.n_images))
        self.bar = tqdm(total=batches * req.steps, unit="step", desc="generating", disable=self.quiet, leave=False)

    def update(self, info) -> None:
        if self.bar is None:
            if self.resume_gc:
                gc.freeze()
                gc.enable()
            self._start()
        total = info.batch_count * info.total_steps
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = info.batch_index * info.total_steps + info.step
        self.bar.refresh()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(result, paths: list[Path], as_json: bool) -> None:
    t = result.timings
    if as_json:
        record = {"paths": [str(p) for p in paths], "seeds": result.seeds, "timings": vars(t),
                  "peak_memory_bytes": result.peak_memory_bytes, "nsfw": result.nsfw,
                  "telemetry": result.telemetry, "metadata": result.metadata}  # fmt: skip
        print(json.dumps(record, default=str, indent=2))
        return
    for path, seed in zip(paths, result.seeds, strict=True):
        print(f"{path}  (seed {seed})")
    meta = result.metadata
    print(
        f"{meta['model']} on {meta['device']['id']} ({meta['dtype']}), {result.request.sampler}, "
        f"{result.request.steps} steps: load {t.load:.2f}s, text {t.text_encoding:.2f}s, "
        f"denoise {t.denoising:.2f}s, decode {t.decoding:.2f}s; peak memory {human_bytes(result.peak_memory_bytes)}"
    )
    if meta.get("random_weights"):
        print("note: random weights - the images are noise, useful only for speed and memory figures")
    if result.nsfw and any(result.nsfw):
        print(f"note: the safety checker blanked {sum(result.nsfw)} image(s)")
    for warning in meta.get("warnings", []):
        print(f"warning: {warning}")
    if result.telemetry:
        print("telemetry: " + _telemetry_text(result.telemetry))


def _telemetry_text(t: dict) -> str:
    parts = [f"{t.get('samples', 0)} samples over {t.get('duration_s') or 0:.1f} s"]
    if t.get("utilization_avg") is not None:
        parts.append(f"utilisation avg {t['utilization_avg']:.0f}% / peak {t.get('utilization_peak') or 0:.0f}%")
    if t.get("memory_used_peak_mib") is not None:
        parts.append(f"peak memory used {t['memory_used_peak_mib']:.0f} MiB")
    if t.get("energy_j") is not None:
        parts.append(f"energy {t['energy_j']:.0f} J")
    return ", ".join(parts)
