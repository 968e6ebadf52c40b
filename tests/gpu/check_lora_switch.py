"""LoRA switch cost: the same request without a LoRA, with LoRA A, with LoRA B, and without again.

Prints the median seconds of each kind of request (after a warm-up of each) and, on CUDA with the fast path,
how many times torch.compile recompiled while LoRAs were switched (the goal: none after the warm-up).

    python tests/gpu/check_lora_switch.py --device cuda --family sd1 --size 512 --repeats 5
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
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    root = Path(tempfile.mkdtemp())
    model = make_tiny_folder(args.family, root / "model")
    for name, seed in (("a", 1), ("b", 2)):
        make_kohya_lora(model, root / "Lora" / f"{name}.safetensors", seed=seed)
    engine = Engine(device=args.device, lora_dir=str(root / "Lora"))
    kinds = {"none": "a red heart", "lora_a": "a red heart <lora:a:0.8>", "lora_b": "a red heart <lora:b:0.8>"}

    def run(prompt: str) -> float:
        req = GenerationRequest(prompt=prompt, model=str(model), width=args.size, height=args.size,
                                steps=args.steps, seed=1)  # fmt: skip
        start = time.perf_counter()
        engine.generate(req)
        return time.perf_counter() - start

    for prompt in kinds.values():
        run(prompt)  # warm-up: load, compile, load each LoRA once
    recompiles_before = _recompiles()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind, prompt in kinds.items():  # every request switches the active LoRA set
            times[kind].append(run(prompt))
    print(json.dumps({
        "device": args.device, "family": args.family, "size": args.size, "steps": args.steps,
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "recompiles_during_switches": _recompiles() - recompiles_before,
    }, indent=2))  # fmt: skip


def _recompiles() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0


if __name__ == "__main__":
    main()
