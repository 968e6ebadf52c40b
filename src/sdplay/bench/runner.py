"""The benchmark: every variant on the same device and inputs, interleaved, warmed up, medians of many runs."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdplay.bench import flops, probes
from sdplay.bench.variants import EAGER, FAST, PEER, PLAIN, Variant, Workload, build
from sdplay.devices import DeviceInfo

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; every count is per variant."""

    models: tuple[str, ...] = ("sd-v1-4",)
    variants: tuple[str, ...] = (PLAIN, EAGER, FAST)
    device: str = "auto"
    dtype: str = "auto"
    steps: int | None = None  # None: the model's default
    width: int | None = None  # None: the model's native size
    height: int | None = None
    runs: int = 5  # timed end-to-end runs at batch 1
    warmup: int = 1  # untimed runs after the first
    max_batch: int = 8  # throughput batch: the largest up to this that fits
    large_runs: int = 2
    unet_iters: int = 30
    random_weights: bool = False
    prompt: str = "a photograph of an astronaut riding a horse on the moon"
    seed: int = 1
    check: bool = False  # exactness of the fast path against sdplay eager
    restart: bool = False  # first image after a restart (warm compile cache), fresh-process memory
    restart_variants: tuple[str, ...] | None = None  # None: the variants without options


def run_bench(cfg: BenchConfig, log: Log = print, save: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Benchmark every model of `cfg`; returns the whole report. `save` gets the partial report as it grows."""
    from sdplay.devices import resolve_device, resolve_dtype
    from sdplay.engine import versions

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    report: dict[str, Any] = {"device": device.to_dict(), "dtype": dtype, "versions": versions(),
                              "config": _jsonable(vars(cfg)), "models": []}  # fmt: skip
    report["matmul_tflops"] = probes.matmul_tflops(device, dtype)
    report["peak_tflops"] = flops.peak_tflops(device.name, dtype)
    report["save"] = save or (lambda _report: None)
    try:
        for model in cfg.models:
            bench_model(model, cfg, device, dtype, log, report)
    finally:
        report.pop("save")
    return report


def workload(model: str, cfg: BenchConfig, dtype: str) -> Workload:
    """The model's defaults, overridden by the configuration."""
    from sdplay import catalog

    spec = catalog.resolve(model)
    return Workload(spec, cfg.prompt, cfg.width or spec.native_size, cfg.height or spec.native_size,
                    cfg.steps or spec.default_steps, spec.default_guidance, spec.default_sampler, dtype,
                    cfg.random_weights)  # fmt: skip


def bench_model(model: str, cfg: BenchConfig, device: DeviceInfo, dtype: str, log: Log, report: dict) -> dict:
    """All measurements of one model, as numbered steps."""
    work = workload(model, cfg, dtype)
    out: dict[str, Any] = {"model": work.spec.name, "width": work.width, "height": work.height,
                           "steps": work.steps, "guidance": work.guidance, "sampler": work.sampler,
                           "random_weights": work.random_weights, "variants": {}}  # fmt: skip
    out["compile_cache"] = _cache_state()
    report["models"].append(out)
    save = report["save"]
    # 1. Build every variant from the same weights; the first run of each pays compilation and capture.
    variants: list[Variant] = []
    for text in cfg.variants:
        log(f"[{work.spec.name}] building {text}")
        try:
            v = build(text, work, device)
            first = probes.timed(device, lambda v=v: v.run(1, cfg.seed))
        except Exception as exc:  # one broken variant must not hide the others' figures
            out["errors"] = out.get("errors", {}) | {text: f"{type(exc).__name__}: {exc}"[:2000]}
            log(f"[{work.spec.name}] {text} failed: {type(exc).__name__}: {exc}")
            _free(device)
            continue
        variants.append(v)
        res = out["variants"][v.name] = {"load_s": v.load_seconds, "setup": _jsonable(v.setup), "first_run_s": first}
        log(f"[{work.spec.name}] {v.name}: load {v.load_seconds:.1f} s, first image {first:.2f} s")
        save(report)
    # 2. Warm up, then time end to end, interleaving variants (rotated each round).
    for k in range(cfg.warmup):
        for v in variants:
            v.run(1, cfg.seed + k)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(cfg.runs):
        for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
            times[v.name].append(probes.timed(device, lambda v=v: v.run(1, cfg.seed)))
    # 3. Phases (hooks on each module), memory, the isolated UNet step, throughput at a large batch.
    for v in variants:
        res = out["variants"][v.name]
        res["e2e_s"] = probes.summary(times[v.name])
        res["images_per_s"] = 1 / res["e2e_s"]["median"]
        res |= _phases_and_memory(v, cfg, work)
        res["unet_step_s"] = probes.unet_step_seconds(v.pipe, device, 2, work.width, work.height, cfg.unet_iters,
                                                      v.host_timestep)  # fmt: skip
        res["large_batch"] = _large_batch(v, cfg) if "[" not in v.name else None  # option variants: batch 1 only
        log(f"[{work.spec.name}] {v.name}: {res['e2e_s']['median']:.3f} s/image, "
            f"UNet step {res['unet_step_s']['median'] * 1e3:.1f} ms")  # fmt: skip
        save(report)
    # 4. FLOPs and utilisation, exactness, restarts.
    out["flops"] = _flops(variants[0].pipe, work)
    for v in variants:
        _utilisation(out["variants"][v.name], out["flops"], work, report.get("peak_tflops"))
    if cfg.check:
        out["exactness"] = _exactness(variants, work, cfg)
        save(report)
    _release(variants, device)
    if cfg.restart:
        from sdplay.bench.restart import restart_all

        out["restart"] = {}
        restart_all(work, cfg, device, log, out["restart"], lambda: save(report))
    save(report)
    return out


def _phases_and_memory(v: Variant, cfg: BenchConfig, work: Workload) -> dict[str, Any]:
    """One hooked run: seconds per phase and the peak memory of this variant alone."""
    import torch

    cuda = v.device.kind == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    hooks = probes.PhaseHooks(v.pipe, v.device)
    try:
        v.run(1, cfg.seed)
    finally:
        hooks.remove()
    calls = hooks.seconds()
    res: dict[str, Any] = {"phases_s": {
        "text": sum(calls.get("text", [])),
        "unet_call": probes.summary(calls["unet"])["median"] if calls.get("unet") else None,
        "unet_total": sum(calls.get("unet", [])),
        "vae": sum(calls.get("vae", [])),
    }}  # fmt: skip
    if v.timings:
        res["sdplay_timings_s"] = dict(v.timings)
    if cuda:
        activations = torch.cuda.max_memory_allocated() - before
        weights, pool = probes.weight_bytes(v.pipe), probes.graph_pool_bytes(v.pipe)
        res["memory"] = {"weights": weights, "run_peak_above_weights": activations, "graph_pool": pool,
                         "peak": weights + activations + (pool or 0)}  # fmt: skip
    return res


def _large_batch(v: Variant, cfg: BenchConfig) -> dict[str, Any] | None:
    """Images/s at the largest batch up to cfg.max_batch that fits (halving on out-of-memory)."""
    from sdplay.errors import DeviceOutOfMemory

    batch = cfg.max_batch
    while batch > 1:
        try:
            first = probes.timed(v.device, lambda b=batch: v.run(b, cfg.seed))
            times = [probes.timed(v.device, lambda b=batch: v.run(b, cfg.seed)) for _ in range(cfg.large_runs)]
        except (DeviceOutOfMemory, RuntimeError) as exc:
            if "out of memory" not in str(exc).lower():
                raise
            _free(v.device)
            batch //= 2
            continue
        median = probes.summary(times)["median"]
        return {"batch": batch, "first_run_s": first, "e2e_s": probes.summary(times), "images_per_s": batch / median}
    return None


def _flops(pipe: Any, work: Workload) -> dict[str, Any]:
    from sdplay.loading import family_of

    family = family_of(pipe).value
    table = flops.table_tflop(family, work.width, work.height)
    unet, vae = table if table else flops.count_tflop(pipe, work.width, work.height)
    guided = work.guidance > 1
    return {"family": family, "source": "table (docs)" if table else "counted (FlopCounterMode)",
            "unet_forward_tflop": unet, "vae_decode_tflop": vae,
            "image_tflop": flops.image_tflop(unet, vae, work.steps, guided), "guided": guided}  # fmt: skip


def _utilisation(res: dict, fl: dict, work: Workload, peak: float | None) -> None:
    res["mfu"] = flops.mfu(fl["image_tflop"], res["e2e_s"]["median"], peak)
    step = res["unet_step_s"]["median"]
    res["unet_tflops"] = fl["unet_forward_tflop"] * 2 / step
    res["unet_mfu"] = flops.mfu(fl["unet_forward_tflop"] * 2, step, peak)
    big = res.get("large_batch")
    if big:
        big["mfu"] = flops.mfu(fl["image_tflop"] * big["batch"], big["e2e_s"]["median"], peak)


def _exactness(variants: list[Variant], work: Workload, cfg: BenchConfig) -> dict[str, Any]:
    from sdplay.bench.exactness import compare

    by_kind = {v.name.partition("[")[0]: v for v in reversed(variants)}  # the first of each kind
    out = {}
    if EAGER in by_kind and FAST in by_kind:
        fast = by_kind[FAST]
        out["fast_vs_eager"] = compare(by_kind[EAGER], fast, work, cfg.seed, modules="deepcache" not in fast.name)
    if EAGER in by_kind and PLAIN in by_kind:
        out["eager_vs_diffusers"] = compare(by_kind[PLAIN], by_kind[EAGER], work, cfg.seed, modules=False)
    if PEER in by_kind and PLAIN in by_kind:  # the peer's own cost in exactness, images only
        out["peer_vs_diffusers"] = compare(by_kind[PLAIN], by_kind[PEER], work, cfg.seed, modules=False)
    for v in variants:  # every fast variant with options: what its options cost in exactness
        if EAGER in by_kind and v.name.startswith(FAST + "[") and v is not by_kind[FAST]:
            # feature reuse makes a lone UNet call depend on earlier calls: compare its images only
            out[f"{v.name}_vs_eager"] = compare(by_kind[EAGER], v, work, cfg.seed, modules="deepcache" not in v.name)
    return out


def _cache_state() -> dict[str, Any]:
    """How many files the compile cache held before this model was built (0: a cold compile)."""
    from sdplay.fastpath import compile_cache_dir

    path = compile_cache_dir()
    return {"path": str(path), "files_before": sum(1 for p in path.rglob("*") if p.is_file())}


def _release(variants: list[Variant], device: DeviceInfo) -> None:
    variants.clear()
    _free(device)


def _free(device: DeviceInfo) -> None:
    from sdplay.devices import empty_cache

    gc.collect()
    empty_cache(device)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))
