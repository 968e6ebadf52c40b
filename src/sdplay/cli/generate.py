"""`sdplay generate`: prompt in, PNGs out, with a progress bar."""

from __future__ import annotations

import argparse
import json
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
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from sdplay import catalog
    from sdplay.images import ensure_writable, save_png
    from sdplay.samplers import get_sampler
    from sdplay.types import GenerationRequest

    width, height = parse_size(args.size)
    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative, model=args.model, n_images=args.n_images,
        batch_size=args.batch_size, steps=args.steps, guidance=args.guidance, width=width, height=height,
        seed=args.seed, sampler=args.sampler, device=args.device, dtype=args.dtype, clip_skip=args.clip_skip,
        loras=tuple(_lora_arg(a) for a in args.lora),
    ).validate()  # fmt: skip
    # Mistakes in the arguments are told before torch and diffusers are imported (seconds on a small CPU).
    catalog.resolve(args.model, allow_pickle=args.allow_pickle)
    if args.sampler:
        get_sampler(args.sampler)
    out_dir = ensure_writable(Path(args.out))
    from sdplay.engine import Engine

    _hide_library_progress()
    engine = Engine(load_options(args), max_models=1)
    plan = engine.plan(request)
    with _Progress(plan.request, quiet=args.json) as progress:
        result = engine.generate(plan, on_step=progress.update, monitor=args.monitor)
    paths = [save_png(result, i, out_dir) for i in range(len(result.images))]
    _report(result, paths, args.json)
    return 0


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
    is never preceded by an empty bar)."""

    def __init__(self, request, quiet: bool):
        self.request, self.quiet, self.bar = request, quiet, None

    def __enter__(self):
        return self

    def _start(self) -> None:
        from tqdm import tqdm

        req = self.request
        batches = -(-req.n_images // (req.batch_size or req.n_images))
        self.bar = tqdm(total=batches * req.steps, unit="step", desc="generating", disable=self.quiet, leave=False)

    def update(self, info) -> None:
        if self.bar is None:
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
