"""What choosing a VAE costs, next to loading the whole model: the embedded model on the CPU.

Writes a VAE file with the architecture of the embedded model's VAE (random weights) to a temporary folder, then
measures in CPU seconds (steadier than wall time on a shared machine): loading the model, loading that VAE file
(diffusers' from_single_file with the model's VAE config), and swapping it in and out for a batch; and the text
encoding of a prompt with and without a textual-inversion name. Prints one JSON row.

Usage: python benchmarks/vae_switch.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def cpu(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from sdplay import catalog, vaes
    from sdplay.devices import discover_devices
    from sdplay.engine import Engine
    from sdplay.loading import LoadOptions, load_pipeline
    from sdplay.types import GenerationRequest

    spec = catalog.builtin("sdplay-emoji")
    device = next(d for d in discover_devices() if d.id == "cpu")
    start = time.process_time()
    loaded = load_pipeline(spec, device, "float32", LoadOptions())
    model_load = time.process_time() - start
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(1)
        other = AutoencoderKL.from_config(loaded.pipe.vae.config)
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(root / "other.safetensors"))
        file = vaes.vae_file(root / "other.safetensors")
        vae_load = cpu(lambda: vaes.load_vae(file, loaded.pipe.vae), args.runs)
        module = vaes.load_vae(file, loaded.pipe.vae)

        def swap() -> None:
            for _ in range(1000):
                with vaes.swapped([loaded.pipe], module):
                    pass

        swap_us = cpu(swap, args.runs) * 1000  # per swap in and out, microseconds
        (root / "emb").mkdir()
        save_file({"emb_params": torch.randn(2, 96) * 3}, str(root / "emb" / "zqstyle.safetensors"))
        engine = Engine(device="cpu", embeddings_dir=str(root / "emb"))

        def text(prompt: str) -> float:
            engine.generate(GenerationRequest(prompt=prompt, steps=1, seed=1))  # warm
            runs = [engine.generate(GenerationRequest(prompt=prompt, steps=1, seed=1)) for _ in range(args.runs)]
            return statistics.median(r.timings.text_encoding for r in runs)

        plain, with_ti = text("red heart"), text("red heart, zqstyle")
    print(json.dumps({"model_load_cpu_s": round(model_load, 3), "vae_load_cpu_s": round(vae_load, 3),
                      "vae_swap_cpu_us": round(swap_us, 1), "text_encoding_wall_s": round(plain, 4),
                      "text_encoding_with_embedding_wall_s": round(with_ti, 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
