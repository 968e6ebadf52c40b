"""Which attention kernel and which matmul precision pay on this GPU, per model, at its native size?

    python tests/gpu/probe_kernels.py sd-v1-4 sd-v2-1 sdxl-base-1.0 --out $OUT/kernels.json
    python tests/gpu/probe_kernels.py sdxl-base-1.0 --compile      # also the whole UNet compiled, fp16 and float8

For each model: the full-size UNet with random weights, fp16, fused QKV, channels-last, batch 2 (guidance), as the
fast path runs it. Measured:
1. every attention call of one UNet step (shapes, counts), each shape timed with every SDPA backend;
2. every linear layer of the transformer blocks, timed in fp16 and as float8 e4m3 with one static scale per tensor
   (`torch._scaled_mm`), the activation's cast timed on its own, and the float8 output's relative error;
3. one UNet step as a CUDA graph of eager kernels with each SDPA backend forced, and with static float8 linear
   layers (sdplay.accel.fp8's, on every transformer-block linear layer, input scales from one step, no margin),
   with the UNet output's relative error against fp16;
4. with --compile: the same step through torch.compile (whole UNet, static shapes), fp16 and float8.
The JSON is rewritten after every measurement, so a run stopped by its time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
from sdplay.accel.fp8 import StaticFloat8Linear  # noqa: E402  (the fast path's own layer)

NATIVE = {"sd-v1-4": 512, "sd-v2-1": 768, "sdxl-base-1.0": 1024}
REPORT: dict = {}


def save(out: Path) -> None:
    out.write_text(json.dumps(REPORT, indent=1, default=str))


def ms(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of `fn` on the current CUDA stream (events around each call)."""

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def build_unet(model: str, tiny: bool):
    from diffusers import UNet2DConditionModel

    from sdplay.accel.fastpath import fuse_qkv
    from sdplay.catalog import builtin

    cfg = UNet2DConditionModel.load_config(builtin(model).config_dir / "unet")
    if tiny:
        from tiny import _shrink_unet

        cfg = _shrink_unet(dict(cfg), "sdxl" if "xl" in model else "sd1")
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(cfg)
    unet = unet.to(torch.float16).eval().requires_grad_(False)
    fuse_qkv(type("P", (), {"unet": unet, "vae": None})())
    return unet.to(memory_format=torch.channels_last)


def inputs(unet, size: int):
    from types import SimpleNamespace

    from sdplay.bench.probes import unet_inputs

    return unet_inputs(SimpleNamespace(unet=unet), 2, size, size, host_timestep=False)


def capture(unet, args, kwargs):
    """Shapes of every SDPA call and every linear layer (with its input's absolute maximum) in one step."""
    import torch.nn.functional as F

    attn: Counter = Counter()
    linears: dict[str, dict] = {}
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, *a, **kw):
        attn[(tuple(q.shape), tuple(k.shape))] += 1
        return original(q, k, v, *a, **kw)

    def hook(name):
        def fn(mod, inp, _out):
            x = inp[0]
            rec = linears.setdefault(name, {"m": x.numel() // x.shape[-1], "k": mod.in_features,
                                            "n": mod.out_features, "amax": 0.0})  # fmt: skip
            rec["amax"] = max(rec["amax"], float(x.abs().amax()))

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and ".attentions." in f".{n}"]  # fmt: skip
    F.scaled_dot_product_attention = sdpa
    try:
        with torch.inference_mode():
            unet(*args, **kwargs)
    finally:
        F.scaled_dot_product_attention = original
        for h in handles:
            h.remove()
    return attn, linears


def backends():
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}  # fmt: skip


def attention_table(attn: Counter) -> dict:
    rows = [attention_row(qs, ks, count) for (qs, ks), count in sorted(attn.items())]
    totals = {name: sum(r[name] * r["calls"] for r in rows if isinstance(r[name], float)) for name in backends()}
    return {"shapes": rows, "step_ms": totals}


def attention_row(qs: tuple, ks: tuple, count: int) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(qs, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(ks, device="cuda", dtype=torch.float16) for _ in range(2))
    row: dict = {"q": qs, "kv": ks, "calls": count}
    for name, backend in backends().items():
        try:
            with sdpa_kernel([backend]), torch.inference_mode():
                row[name] = ms(lambda: F.scaled_dot_product_attention(q, k, v))
        except RuntimeError as exc:
            row[name] = f"unsupported: {str(exc).splitlines()[0][:120]}"
    return row


def quantize_weight(w):

    scale = (w.float().abs().amax() / 448).clamp(min=1e-12)
    return (w.float() / scale).to(torch.float8_e4m3fn), scale


def linear_table(unet, linears: dict) -> dict:
    mods = dict(unet.named_modules())
    shapes: Counter = Counter()
    for name, rec in linears.items():
        shapes[(rec["m"], rec["k"], rec["n"], mods[name].bias is not None)] += 1
    rows = [linear_row(*shape, count) for shape, count in sorted(shapes.items())]

    def total(key: str) -> float:
        return sum(r[key] * r["calls"] for r in rows if isinstance(r.get(key), float))

    return {"shapes": rows, "step_ms": {"fp16": total("fp16"), "fp8_gemm": total("fp8"),
                                        "fp8_cast_eager": total("cast")}}  # fmt: skip


def linear_row(m: int, k: int, n: int, has_bias: bool, count: int) -> dict:
    import torch.nn.functional as F

    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k**0.5
    b = torch.randn(n, device="cuda", dtype=torch.float16) if has_bias else None
    row: dict = {"m": m, "k": k, "n": n, "calls": count, "fp16": ms(lambda: F.linear(x, w, b))}
    if k % 16 or n % 16:
        return row | {"fp8": "skipped: not a multiple of 16"}
    w8, sw = quantize_weight(w)
    sx = (x.float().abs().amax() / 448).clamp(min=1e-12)
    inv = (1 / sx).to(torch.float16)
    x8, wt = (x * inv).to(torch.float8_e4m3fn), w8.t()

    def fp8():
        return torch._scaled_mm(x8, wt, scale_a=sx, scale_b=sw, bias=b, out_dtype=torch.float16)

    try:
        row["fp8"] = ms(fp8)
        row["cast"] = ms(lambda: (x * inv).to(torch.float8_e4m3fn))
        ref = F.linear(x, w, b).float()
        row["rel_error"] = float((fp8().float() - ref).norm() / ref.norm())
    except RuntimeError as exc:
        row["fp8"] = f"failed: {str(exc).splitlines()[0][:160]}"
    return row


def to_fp8(unet, linears: dict) -> int:
    done = 0
    for name, rec in linears.items():
        if rec["k"] % 16 or rec["n"] % 16:
            continue
        parent, _, child = name.rpartition(".")
        owner = unet.get_submodule(parent)
        setattr(owner, child, StaticFloat8Linear(getattr(owner, child), rec["amax"]))
        done += 1
    return done


def graphed_step_ms(unet, args, kwargs, backend=None) -> float:
    """One UNet step captured as a CUDA graph (eager kernels), replayed."""
    import contextlib

    from torch.nn.attention import sdpa_kernel

    ctx = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                unet(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            unet(*args, **kwargs)
        result = ms(graph.replay, iters=20)
    del graph
    return result


def rel_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def probe(model: str, tiny: bool, compiled: bool, out: Path) -> None:

    rep = REPORT.setdefault(model, {})
    size = 256 if tiny else NATIVE[model]
    unet = build_unet(model, tiny)
    args, kwargs = inputs(unet, size)
    attn, linears = capture(unet, args, kwargs)
    rep["attention"] = attention_table(attn)
    save(out)
    rep["linear"] = linear_table(unet, linears)
    save(out)
    with torch.inference_mode():
        ref = unet(*args, **kwargs)[0]
    steps = rep.setdefault("unet_step_graphed_ms", {})
    for name, backend in [("default", None), *backends().items()]:
        try:
            steps[name] = graphed_step_ms(unet, args, kwargs, backend)
        except RuntimeError as exc:
            steps[name] = f"failed: {str(exc).splitlines()[0][:160]}"
        save(out)
    if compiled:
        rep["compiled_fp16"] = compiled_step(unet, args, kwargs, ref)
        save(out)
    rep["fp8_layers"] = to_fp8(unet, linears)
    with torch.inference_mode():
        rep["fp8_unet_rel_error"] = rel_error(unet(*args, **kwargs)[0], ref)
    steps["fp8_static"] = graphed_step_ms(unet, args, kwargs)
    save(out)
    if compiled:
        rep["compiled_fp8"] = compiled_step(unet, args, kwargs, ref)
        save(out)
    print(json.dumps({model: rep}, default=str)[:4000], flush=True)


def compiled_step(unet, args, kwargs, ref) -> dict:
    """The whole UNet through torch.compile (static shapes), captured as a CUDA graph; compile seconds and ms/step."""

    torch._dynamo.reset()
    fn = torch.compile(unet.forward, dynamic=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        first = fn(*args, **kwargs)[0]
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    original, unet.forward = unet.forward, fn
    try:
        step = graphed_step_ms(unet, args, kwargs)
    finally:
        unet.forward = original
    return {"compile_s": compile_s, "step_ms": step, "rel_error": rel_error(first, ref)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", choices=sorted(NATIVE))
    ap.add_argument("--out", type=Path, default=Path("kernels.json"))
    ap.add_argument("--tiny", action="store_true", help="shrunken UNets at 256 (a quick check of the script)")
    ap.add_argument("--compile", action="store_true", help="also time the whole UNet compiled (fp16 and float8)")
    a = ap.parse_args()

    REPORT["env"] = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                     "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    for model in a.models:
        t0 = time.perf_counter()
        try:
            probe(model, a.tiny, a.compile, a.out)
        except Exception as exc:  # record it and go on with the next model
            REPORT.setdefault(model, {})["error"] = f"{type(exc).__name__}: {exc}"[:400]
        REPORT[model]["wall_s"] = time.perf_counter() - t0
        save(a.out)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
