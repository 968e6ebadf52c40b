"""The pipelines a benchmark compares: plain diffusers, sdplay without and with the fast path."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from sdplay.catalog import ModelSpec
from sdplay.devices import DeviceInfo

PLAIN, PEER, EAGER, FAST = "diffusers", "diffusers-compile", "sdplay-eager", "sdplay-fast"
KINDS = (PLAIN, PEER, EAGER, FAST)
# The peer a speed-minded diffusers user would pick: channels-last UNet, fused QKV projections, the whole UNet through
# torch.compile (fullgraph). Options in brackets: mode (default reduce-overhead, e.g. max-autotune), dynamic.
PEER_DEFAULTS = {"mode": "reduce-overhead", "dynamic": "none", "backend": "inductor"}


@dataclass
class Variant:
    """One way to make images: `run(batch, seed)` makes `batch` images end to end (PIL included)."""

    name: str
    pipe: Any
    device: DeviceInfo
    runner: Any
    load_seconds: float
    setup: dict[str, Any] = field(default_factory=dict)
    host_timestep: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # sdplay's own phase times of the last run

    def run(self, batch: int, seed: int) -> list[Any]:
        return self.runner(batch, seed)


@dataclass(frozen=True)
class Workload:
    """What every variant makes: the same prompt, size, steps, guidance and sampler."""

    spec: ModelSpec
    prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    sampler: str
    dtype: str
    random_weights: bool
    weights_seed: int = 0


def parse_variant(text: str) -> tuple[str, str | None]:
    """'sdplay-fast[compile=none,vae=off]' -> ('sdplay-fast', 'compile=none,vae=off')."""
    name, _, rest = text.partition("[")
    if name not in KINDS:
        from sdplay.errors import InvalidRequest

        raise InvalidRequest(
            f"Unknown variant {name!r}.", hint=f"Use {PLAIN}, {PEER}[mode=...], {EAGER} or {FAST}[options]."
        )
    return name, rest.rstrip("]") or None


def peer_options(text: str | None) -> dict[str, str]:
    """'mode=max-autotune' -> the peer's torch.compile settings, defaults filled in."""
    from sdplay.errors import InvalidRequest

    out = dict(PEER_DEFAULTS)
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, _, value = part.partition("=")
        if key.strip() not in out:
            raise InvalidRequest(f"Unknown {PEER} option {key.strip()!r}.", hint=f"Use: {', '.join(out)}.")
        out[key.strip()] = value.strip()
    return out


def build(text: str, work: Workload, device: DeviceInfo) -> Variant:
    """Build the variant named `text` on `device` (weights from the same seed, so every variant agrees)."""
    name, options = parse_variant(text)
    if name == PLAIN:
        return _plain(text, work, device)
    if name == PEER:
        return _peer(text, work, device, peer_options(options))
    return _sdplay(text, work, device, fast=name == FAST, options=options)


def _plain(label: str, work: Workload, device: DeviceInfo) -> Variant:
    """The pipeline a user would otherwise run: stock diffusers classes, default settings."""
    import torch

    start = time.perf_counter()
    torch_dtype = getattr(torch, work.dtype)
    if work.random_weights:
        from sdplay.loading import build_random_pipeline

        pipe = build_random_pipeline(work.spec, torch_dtype, device.id, work.weights_seed)
    else:
        from diffusers import DiffusionPipeline

        source = str(work.spec.weights_dir or work.spec.repo_id)
        pipe = DiffusionPipeline.from_pretrained(source, dtype=torch_dtype, local_files_only=True)
        if getattr(pipe, "safety_checker", None) is not None:
            pipe.safety_checker = None  # sdplay runs without it here too: compare the same work
    pipe.to(device.id)
    pipe.set_progress_bar_config(disable=True)
    seconds = time.perf_counter() - start
    from sdplay.samplers import make_scheduler

    base_config = dict(pipe.scheduler.config)

    def run(batch: int, seed: int) -> list[Any]:
        pipe.scheduler = make_scheduler(work.sampler, base_config)
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
        return pipe(prompt=[work.prompt] * batch, height=work.height,  # no negative prompt: "" (SDXL: zeros)
                    width=work.width, num_inference_steps=work.steps, guidance_scale=work.guidance,
                    generator=gens, output_type="pil").images  # fmt: skip

    return Variant(label, pipe, device, run, seconds, {"pipeline": type(pipe).__name__})


def _peer(label: str, work: Workload, device: DeviceInfo, opts: dict[str, str]) -> Variant:
    """Plain diffusers plus the recipe of diffusers' own speed guide, compiled lazily at the first image."""
    import torch

    from sdplay.accel.fastpath import compile_cache_dir

    variant = _plain(label, work, device)
    pipe, start = variant.pipe, time.perf_counter()
    compile_cache_dir()  # the same on-disk compile cache as sdplay's, so restarts of both find their kernels
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.fuse_qkv_projections()
    dynamic = {"none": None, "true": True, "false": False}[opts["dynamic"].lower()]
    mode = opts["mode"] if opts["backend"] == "inductor" else None  # modes are Inductor's
    pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True, dynamic=dynamic, backend=opts["backend"])
    variant.load_seconds += time.perf_counter() - start
    variant.setup |= {"channels_last": "unet", "fused_qkv": True, "torch_compile": {"fullgraph": True, **opts}}
    return variant


def _sdplay(label: str, work: Workload, device: DeviceInfo, fast: bool, options: str | None) -> Variant:
    """sdplay's engine, loading the same weights; the fast path configured by `options` when on."""
    from sdplay.accel.fastpath import ENV
    from sdplay.engine import Engine
    from sdplay.loading import LoadOptions
    from sdplay.types import GenerationRequest

    fast_options = os.environ.get(ENV, "") if options is None else options  # the benchmark edge reads $SDPLAY_FAST
    opts = LoadOptions(random_weights=work.random_weights, safety_checker=False, fast=fast, seed=work.weights_seed,
                       fast_options=fast_options)  # fmt: skip
    engine = Engine(opts, max_models=1)
    model = work.spec.name if work.random_weights or work.spec.repo_id else str(work.spec.weights_dir)
    loaded, _ = engine.load(model, device.id, work.dtype)
    request = GenerationRequest(prompt=work.prompt, model=model, width=work.width, height=work.height,
                                steps=work.steps, guidance=work.guidance, sampler=work.sampler,
                                device=device.id, dtype=work.dtype)  # fmt: skip

    def run(batch: int, seed: int) -> list[Any]:
        result = engine.generate(engine.plan(request.with_(n_images=batch, seed=seed)))
        variant.timings = dict(vars(result.timings))
        return result.images

    fast_choices = loaded.choices.get("fast_path")
    host = isinstance(fast_choices, dict) and bool(fast_choices.get("host_timesteps"))
    variant = Variant(label, loaded.pipe, device, run, loaded.load_seconds, {"optimisation": loaded.choices}, host)
    return variant
