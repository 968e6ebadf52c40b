"""Does the model draw what it is asked? Nearest-training-image retrieval, colour checks, a sample grid.

For each caption prompt, generate one image with a fixed seed and rank every training image by its
distance to it (32x32 pixels); a hit at k means an image with that caption is among the k nearest.
Run `python -m sdplay.training.evaluate` for the full report.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sdplay.training.data import CaptionedImages, load_set
from sdplay.training.features import eval_indices, features

COLOUR_CHECKS = (
    ("red heart", "red"), ("blue heart", "blue"), ("green heart", "green"), ("yellow heart", "yellow"),
    ("purple heart", "purple"), ("green apple", "green"),
)  # fmt: skip


@dataclass
class Report:
    """Retrieval accuracy of generated images against the training set."""

    n: int
    top1: float
    top5: float
    colours: dict[str, float] = field(default_factory=dict)
    per_category: dict[str, float] = field(default_factory=dict)
    misses: list[tuple[str, str]] = field(default_factory=list)  # (prompt, caption of the nearest image)
    misses5: list[tuple[str, str]] = field(default_factory=list)  # the same, for prompts missed at top-5
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        colours = ", ".join(f"{p!r} {s:.0%}" for p, s in self.colours.items())
        return f"n={self.n} top-1 {self.top1:.1%} top-5 {self.top5:.1%} | colour share: {colours}"


def nearest(generated: np.ndarray, reference: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices (N, k) of the k reference images nearest to each generated one (squared L2)."""
    g, r = features(generated), features(reference)
    d = (g * g).sum(1)[:, None] - 2 * g @ r.T + (r * r).sum(1)[None, :]  # (N_gen, N_ref)
    return np.argsort(d, axis=1)[:, :k]


def colour_share(image: np.ndarray, colour: str) -> float:
    """Share of the non-white pixels whose hue, saturation and value name `colour` ('red', 'yellow', ...)."""
    from sdplay.training.captions import colour_names

    px = image.reshape(-1, 3)
    ink = px[px.min(1) < 225].astype(np.float32) / 255
    if len(ink) == 0:
        return 0.0
    return float((colour_names(ink) == colour).mean())


def score(
    prompts: list[str],
    images: np.ndarray,
    data: CaptionedImages,
    targets: list[tuple[str, ...]] | None = None,
    groups: dict[str, list[str]] | None = None,
) -> Report:
    """Top-1 / top-5 retrieval of `images` (generated from `prompts`) among the training images.

    A prompt is answered by an image captioned with one of its `targets` (default: the prompt itself);
    `groups` adds more breakdowns ({name: one label per prompt}) beside the per-category one.
    """
    targets = targets or [(p,) for p in prompts]
    near = nearest(images, data.images)
    hits1 = [data.captions[row[0]] in t for t, row in zip(targets, near, strict=True)]
    hits5 = [any(data.captions[j] in t for j in row) for t, row in zip(targets, near, strict=True)]
    category = dict(zip(data.captions, data.categories or [""] * len(data), strict=True))
    labels = {"": [category.get(t[0], "") for t in targets], **(groups or {})}
    per: dict[str, list[bool]] = {}
    for name, values in labels.items():
        for value, hit in zip(values, hits5, strict=True):
            per.setdefault(f"{name}: {value}" if name else value, []).append(hit)
    misses = [(p, data.captions[row[0]]) for p, row, h in zip(prompts, near, hits1, strict=True) if not h]
    misses5 = [(p, data.captions[row[0]]) for p, row, h in zip(prompts, near, hits5, strict=True) if not h]
    return Report(
        n=len(prompts),
        top1=float(np.mean(hits1)),
        top5=float(np.mean(hits5)),
        per_category={c: float(np.mean(v)) for c, v in sorted(per.items())},
        misses=misses,
        misses5=misses5,
    )


# Generation --------------------------------------------------------------------------------------


def load_pipeline(model: str | Path, device: str = "cpu", sampler: str = "DPM++ 2M"):
    """A diffusers StableDiffusionPipeline of a model folder (or built-in name), float32, on `device`."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdplay.samplers import make_scheduler
    from sdplay.training.export import model_folder

    folder = model_folder(str(model))
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    pipe.scheduler = make_scheduler(sampler, dict(pipe.scheduler.config))  # the one sampler table
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_with_pipeline(
    pipe, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0, batch: int = 32
) -> np.ndarray:
    """One image per prompt, each from a generator seeded with `seed`, as (N, 64, 64, 3) uint8."""
    import torch

    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        gens = [torch.Generator(pipe.device).manual_seed(seed) for _ in chunk]
        result = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np")
        out.append((result.images * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def generate_with_engine(
    model: str, prompts: list[str], seed: int, steps: int, guidance: float, sampler: str, batch: int = 32,
    fast_options: str = "",
) -> np.ndarray:  # fmt: skip
    """The same through sdplay's Engine: one request per prompt, run as shared batches (fast path if options)."""
    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    engine = Engine(fast=True, fast_options=fast_options) if fast_options else Engine()
    out = []
    for start in range(0, len(prompts), batch):
        requests = [
            GenerationRequest(prompt=p, model=model, seed=seed, steps=steps, guidance=guidance, sampler=sampler)
            for p in prompts[start : start + batch]
        ]
        out += [np.asarray(r.images[0].convert("RGB")) for r in engine.generate_batch(requests)]
    return np.stack(out)


def generate(model, prompts, seed=0, steps=20, guidance=4.0, sampler="DPM++ 2M", device="cpu", backend="auto",
             fast_options=""):  # fmt: skip
    """Images for `prompts` through the Engine when it exists (backend 'auto'/'engine'), else diffusers.

    `fast_options` (Engine only): run the fast path with these options, e.g. "fp8=static", to measure what an
    option costs in quality."""
    if fast_options and backend == "diffusers":
        raise ValueError("fast-path options need the engine backend")
    if backend in ("auto", "engine"):
        try:
            import sdplay.engine  # noqa: F401
        except ImportError:
            if backend == "engine":
                raise
        else:
            return generate_with_engine(str(model), prompts, seed, steps, guidance, sampler, fast_options=fast_options)
    return generate_with_pipeline(load_pipeline(model, device, sampler), prompts, seed, steps, guidance)


def evaluate(
    model: str | Path = "sdplay-emoji",
    data: CaptionedImages | None = None,
    n: int = 256,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 4.0,
    sampler: str = "DPM++ 2M",
    device: str = "cpu",
    backend: str = "auto",
    heldout: bool | list = False,
    fast_options: str = "",
) -> tuple[Report, np.ndarray, list[str]]:
    """Generate for `n` fixed prompts plus the colour checks, and score them.

    The prompts are training captions, or with `heldout` the held-out prompts (`heldout.tsv`; a list
    of them to use those): n evenly spread ones, answered by their targets or an emoji drawn the same.
    """
    data = data or load_set()
    prompts, targets, groups = _prompts(data, n, heldout)
    colour_prompts = [p for p, _ in COLOUR_CHECKS if p in data.captions]
    began = time.perf_counter()
    images = generate(model, prompts + colour_prompts, seed, steps, guidance, sampler, device, backend, fast_options)
    report = score(prompts, images[: len(prompts)], data, targets, groups)
    report.seconds = time.perf_counter() - began
    colours = dict(COLOUR_CHECKS)
    report.colours = {
        p: colour_share(im, colours[p]) for p, im in zip(colour_prompts, images[len(prompts) :], strict=True)
    }
    report.settings = {"model": str(model), "seed": seed, "steps": steps, "guidance": guidance, "sampler": sampler,
                       "fast_options": fast_options}  # fmt: skip
    return report, images, prompts + colour_prompts


def _prompts(data: CaptionedImages, n: int, heldout: bool | list):
    """(prompts, accepted captions of each, breakdowns) of a caption or held-out evaluation."""
    if not heldout:
        prompts = [data.captions[i] for i in eval_indices(data, n)]
        return prompts, None, None
    from sdplay.training import heldout as held

    chosen = heldout if isinstance(heldout, list) else held.load()
    picks = np.unique(np.linspace(0, len(chosen) - 1, min(n, len(chosen))).round().astype(int))
    chosen = [chosen[i] for i in picks]
    same = held.twins(data)
    targets = [tuple(t for c in p.targets for t in (c, *sorted(same.get(c, ())))) for p in chosen]
    return [p.prompt for p in chosen], targets, {"kind": [p.kind for p in chosen]}


def save_grid(images: np.ndarray, captions: list[str], path: Path, cols: int = 8, scale: int = 2) -> Path:
    """A PNG grid of images, each with its prompt written under it."""
    from PIL import Image, ImageDraw, ImageFont

    side, label = images.shape[1] * scale, 30
    rows = -(-len(images) // cols)
    cell_w = side + 40
    grid = Image.new("RGB", (cols * cell_w, rows * (side + label)), "white")
    draw = ImageDraw.Draw(grid)
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:
        font = ImageFont.load_default()
    for i, (im, text) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % cols) * cell_w, (i // cols) * (side + label)
        grid.paste(Image.fromarray(im).resize((side, side), Image.NEAREST), (x + 20, y))
        for line_no, line in enumerate(_wrap(text, 22)[:2]):
            width = draw.textlength(line, font=font)
            draw.text((x + (cell_w - width) / 2, y + side + 2 + 12 * line_no), line, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    return path


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line]


GRID_PROMPTS = (
    "a cat", "a kitten", "a puppy", "a red heart", "a blue heart", "a green heart", "a yellow heart",
    "a purple heart", "a shiny red apple", "a banana", "a slice of pizza", "a birthday cake", "a cup of coffee",
    "a rocket", "a car", "a bicycle", "a tree", "a cactus", "a sunflower", "a rainbow", "a snowflake", "a ghost",
    "a robot", "a unicorn", "an octopus", "a penguin", "a guitar", "a light bulb", "a crown", "a thumbs up",
    "the japanese flag", "a smiley face",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line: print the full evaluation report (and optionally save the sample grid)."""
    parser = argparse.ArgumentParser(prog="python -m sdplay.training.evaluate", description=main.__doc__)
    parser.add_argument("--model", default="sdplay-emoji", help="built-in name or diffusers folder")
    parser.add_argument("--data", type=Path, default=None, help="the .npz set (default: the emoji cache)")
    parser.add_argument("--set", choices=["captions", "heldout", "both"], default="both", help="which prompts")
    parser.add_argument("-n", type=int, default=256, help="number of training-caption prompts")
    parser.add_argument("--heldout-n", type=int, default=1000, help="number of held-out prompts (all: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=["auto", "engine", "diffusers"], default="auto")
    parser.add_argument("--grid", type=Path, default=None, help="write a sample grid PNG here")
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--fast-options", default="", help='engine fast path with these options, e.g. "fp8=static"')
    args = parser.parse_args(argv)
    if args.fast_options and args.backend == "diffusers":
        parser.error("--fast-options runs sdplay's engine: use --backend engine (or auto)")
    return run_report(args)


def run_report(args: argparse.Namespace) -> int:
    """Evaluate as `args` say, print the reports, write the grid and JSON if asked."""
    data = load_set(args.data)
    settings = {k: getattr(args, k) for k in ("seed", "steps", "guidance", "sampler", "device", "backend",
                                             "fast_options")}  # fmt: skip
    sets = {"captions": (args.n, False), "heldout": (args.heldout_n, True)}
    reports = {}
    for name in ("captions", "heldout") if args.set == "both" else (args.set,):
        n, held = sets[name]
        report, _, _ = evaluate(args.model, data, n=n, heldout=held, **settings)
        reports[name] = asdict(report)
        print(f"== {name}:", report.summary(), f"({report.seconds:.1f} s)")
        for cat, value in report.per_category.items():
            print(f"  top-5 {value:6.1%}  {cat}")
        worst = report.misses5 if held else report.misses
        print(f"  misses{' (not in top 5)' if held else ''}, prompt -> nearest:",
              "; ".join(f"{p} -> {q}" for p, q in worst[:20]) or "none")  # fmt: skip
    if args.grid:
        prompts = GRID_PROMPTS
        grid_images = generate(args.model, list(prompts), **settings)
        print("grid:", save_grid(grid_images, list(prompts), args.grid))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
