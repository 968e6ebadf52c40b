"""Where does an AOTInductor package of a UNet fail on this GPU? Each step in its own process (a crash names itself).

    python tests/gpu/probe_aot.py            # tiny SD1 UNet, fp16, channels-last, fused QKV (as the fast path)

Steps: compile one package; then load it with each runner/weights setting, call it, compare with eager, capture and
replay a CUDA graph of it; then the whole engine (fast path compile=aot) on a tiny model folder.
"""

from __future__ import annotations

import faulthandler
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
faulthandler.enable()
WORK = Path("/tmp/probe-aot")
DEVICE = __import__("os").environ.get("PROBE_DEVICE", "cuda")
STEP_LIMIT_S = float(__import__("os").environ.get("PROBE_STEP_LIMIT_S", "400"))


def unet():
    import torch
    from tiny import _json, _shrink_unet, seed_layout

    from sdplay.accel.fastpath import fuse_qkv

    torch.manual_seed(0)
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    m = UNet2DConditionModel.from_config(_shrink_unet(_json(seed_layout("sd1") / "unet/config.json"), "sd1"))
    m = m.to(DEVICE, torch.float16 if DEVICE == "cuda" else torch.float32).eval().requires_grad_(False)
    fuse_qkv(SimpleNamespace(unet=m, vae=None))
    return m.to(memory_format=torch.channels_last)


def inputs(m):
    from types import SimpleNamespace

    from sdplay.bench.probes import unet_inputs

    return unet_inputs(SimpleNamespace(unet=m), 2, 64, 64, host_timestep=False)


def step(name: str) -> dict:
    import torch

    from sdplay.accel import aotpackages

    m = unet()
    args, kwargs = inputs(m)
    path = WORK / "unet.pt2"
    out: dict = {"step": name}
    t0 = time.perf_counter()
    if name == "compile":
        program = aotpackages.export(m.forward, m, args, kwargs, DEVICE)
        out["export_s"] = time.perf_counter() - t0
        print(name, "exported", out["export_s"], flush=True)
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(path), inductor_configs=aotpackages.INDUCTOR_CONFIGS
            )
        out["compile_s"] = time.perf_counter() - t0
        print(name, "compiled", out["compile_s"], flush=True)
        return out
    single, shared = {"single-shared": (True, True), "multi-shared": (False, True), "single-copied": (True, False),
                      "multi-copied": (False, False)}[name]  # fmt: skip
    model = torch._inductor.aoti_load_package(str(path), run_single_threaded=single, device_index=0)
    print(name, "loaded", flush=True)
    tensors = dict(m.named_parameters(remove_duplicate=False)) | dict(m.named_buffers(remove_duplicate=False))
    consts = {k: tensors[k.removeprefix("m.")] for k in model.get_constant_fqns()}
    model.load_constants(consts, check_full_update=True, user_managed=shared)
    print(name, "constants", flush=True)
    with torch.inference_mode():
        ref = m(*args, **kwargs)[0]
        got = model(*args, **kwargs)[0]
        torch.cuda.synchronize()
        out["rel_error"] = float((got.double() - ref.double()).norm() / ref.double().norm())
        print(name, "eager call", out["rel_error"], flush=True)
        from sdplay.accel.fastgraphs import GraphedForward, cuda_recorder

        g = GraphedForward(lambda *a, **k: model(*a, **k), "cuda:0", cuda_recorder(), "aot")
        first = g(*args, **kwargs)[0]
        again = g(*args, **kwargs)[0]
        torch.cuda.synchronize()
        out["graph"] = g.stats.to_dict()
        out["graph_rel_error"] = float((again.double() - ref.double()).norm() / ref.double().norm())
        out["graph_first_rel_error"] = float((first.double() - ref.double()).norm() / ref.double().norm())
    return out


def engine() -> dict:
    import os

    import numpy as np
    from tiny import make_tiny_folder

    from sdplay.engine import Engine
    from sdplay.loading import LoadOptions
    from sdplay.types import GenerationRequest

    folder = WORK / "tiny-sd1"
    if not folder.exists():
        make_tiny_folder("sd1", folder)
    os.environ["SDPLAY_FAST"] = "compile=aot,experimental=true"
    req = GenerationRequest(prompt="a red heart", model=str(folder), width=64, height=64, steps=4, seed=1,
                            sampler="Euler", guidance=7.5, device="cuda", dtype="float16")  # fmt: skip
    fast = Engine(LoadOptions(safety_checker=False))
    t0 = time.perf_counter()
    a = np.asarray(fast.generate(req).images[0], dtype=np.int16)
    first = time.perf_counter() - t0
    loaded, _ = fast.load(str(folder), "cuda", "float16")
    stats = loaded.pipe.sdplay_fast.stats()
    del os.environ["SDPLAY_FAST"]
    eager = Engine(LoadOptions(safety_checker=False, fast=False))
    b = np.asarray(eager.generate(req).images[0], dtype=np.int16)
    return {"step": "engine", "first_image_s": first, "max_abs_diff": int(np.abs(a - b).max()), "stats": stats}


def main() -> int:
    if len(sys.argv) > 1:
        result = engine() if sys.argv[1] == "engine" else step(sys.argv[1])
        (WORK / f"{sys.argv[1]}.json").write_text(json.dumps(result))
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    results = []
    for name in ("compile", "single-shared", "multi-shared", "single-copied", "engine"):
        t0 = time.perf_counter()
        print(f"== step {name}", flush=True)  # the step's own output follows unbuffered: a hang or crash shows where
        done = WORK / f"{name}.json"
        done.unlink(missing_ok=True)
        try:
            rc = subprocess.run([sys.executable, __file__, name], timeout=STEP_LIMIT_S).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        res = json.loads(done.read_text()) if done.is_file() else {"step": name}
        res |= {"rc": rc, "wall_s": time.perf_counter() - t0}
        results.append(res)
        print(json.dumps(res)[:3000], flush=True)
    out = Path(__import__("os").environ.get("OUT", "/tmp")) / "probe-aot.json"
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
