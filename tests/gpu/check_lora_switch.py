"""LoRA switch cost: the same request without a LoRA, with LoRA A, with LoRA B, and without again.

Prints the median seconds of each kind of request (after a warm-up of each) and, on CUDA with the fast path,
how many times torch.compile recompiled while LoRAs were switched (the goal: none after the warm-up).

    python tests/gpu/check_lora_switch.py --device cuda --model sd-v1-4 --size 512 --steps 20 --repeats 5
        # a full-size architecture with random weights (fp16) and rank-16 LoRAs on its attention projections
    python tests/gpu/check_lora_switch.py --device cuda --family sd1 --size 512 --repeats 5   # tiny model
    python tests/gpu/check_lora_switch.py --device cpu --size 64 --repeats 3   # tiny model, CPU figure
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import make_kohya_lora, make_tiny_folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--family", default="sd1", choices=("sd1", "sd2", "sdxl"))
    ap.add_argument("--model", default=None, help="a catalog model (full size, random weights) instead of a tiny one")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    root = Path(tempfile.mkdtemp())
    if args.model:
        from sdplay import catalog
        from sdplay.loading import config_folder

        layout, model = config_folder(catalog.resolve(args.model)), args.model
        extra = {"random_weights": True}
    else:
        layout = model = make_tiny_folder(args.family, root / "model")
        extra = {}
    for name, seed in (("a", 1), ("b", 2)):  # small scale: a full-size UNet stays finite in fp16
        make_kohya_lora(layout, root / "Lora" / f"{name}.safetensors", rank=args.rank, scale=0.05, seed=seed)
    engine = Engine(device=args.device, lora_dir=str(root / "Lora"), **extra)
    kinds = {"none": "a red heart", "lora_a": "a red heart <lora:a:0.8>", "lora_b": "a red heart <lora:b:0.8>"}

    def run(prompt: str) -> float:
        req = GenerationRequest(prompt=prompt, model=str(model), width=args.size, height=args.size,
                                steps=args.steps, seed=1, device=args.device)  # fmt: skip
        start = time.perf_counter()
        engine.generate(req)
        return time.perf_counter() - start

    warm = {kind: round(run(prompt), 3) for kind, prompt in kinds.items()}  # load, compile, each LoRA once
    recompiles_before = _recompiles()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind, prompt in kinds.items():  # every request switches the active LoRA set
            times[kind].append(run(prompt))
    report = {
        "device": args.device, "model": args.model or f"tiny {args.family}", "size": args.size, "steps": args.steps,
        "rank": args.rank, "first_request_s": warm,
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "recompiles_during_switches": _recompiles() - recompiles_before,
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _recompiles() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0


if __name__ == "__main__":
    main()
