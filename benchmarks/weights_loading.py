"""Seconds to load a model's weights as users meet them: a diffusers folder and an original-layout single file.

Saves the full-size random weights once (`--random-weights` architecture, float16) as `.safetensors` in both
layouts under `--out`, reads every file once (warm page cache), then times `Engine.load` in fresh processes,
`--runs` times per layout, alternating. Each timing is the engine's own load time (files to a pipeline on the
device, optimisation step included; the fast path compiles lazily, at the first image) and the process's wall
time including imports and CUDA start-up.

    python benchmarks/weights_loading.py --model sdxl-base-1.0 --out /tmp/sdplay-weights --runs 3 --json load.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "SDPLAY_LOAD_RESULT "
FAMILIES = {"sd-v1-4": "sd1", "sd-v2-1": "sd2", "sdxl-base-1.0": "sdxl"}


def save(model: str, out: Path, device: str) -> dict:
    """The random pipeline saved as a diffusers folder and as one original-layout file (skipped if present)."""
    import torch

    from sdplay import catalog
    from sdplay.loading import build_random_pipeline

    sys.path.insert(0, str(ROOT / "tests"))
    from singlefile import write_single_file  # the converter the single-file tests use

    folder, single = out / model, out / f"{model}.safetensors"
    times: dict[str, float] = {}
    if not (folder / "model_index.json").is_file():
        start = time.perf_counter()
        pipe = build_random_pipeline(catalog.resolve(model), torch.float16, device)
        times["random_init_s"] = time.perf_counter() - start
        start = time.perf_counter()
        pipe.save_pretrained(folder, safe_serialization=True)
        times["save_folder_s"] = time.perf_counter() - start
        del pipe
    if not single.is_file():
        start = time.perf_counter()
        write_single_file(folder, FAMILIES[model], single)
        times["save_single_file_s"] = time.perf_counter() - start
    sizes = {"folder_bytes": sum(p.stat().st_size for p in folder.rglob("*.safetensors")),
             "single_file_bytes": single.stat().st_size}  # fmt: skip
    return {"folder": str(folder), "single_file": str(single)} | times | sizes


def warm(paths: list[Path]) -> float:
    """Read every weight file once, so the timed loads find them in the page cache."""
    start = time.perf_counter()
    for path in paths:
        for f in [path] if path.is_file() else sorted(path.rglob("*.safetensors")):
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass
    return time.perf_counter() - start


def measure_once(model: str, device: str) -> dict:
    """In a fresh process: import, load through the engine, report."""
    started = time.perf_counter()
    from sdplay.engine import Engine
    from sdplay.loading import LoadOptions

    imported = time.perf_counter()
    engine = Engine(LoadOptions(safety_checker=False), max_models=1)
    loaded, _ = engine.load(model, device, "float16" if device.startswith("cuda") else "auto")
    import torch

    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return {"import_s": imported - started, "load_s": loaded.load_seconds, "process_s": time.perf_counter() - started,
            "source": loaded.choices.get("source")}  # fmt: skip


def run(model: str, out: Path, runs: int, device: str) -> dict:
    report: dict = {"model": model, "saved": save(model, out, device)}
    paths = {"folder": out / model, "single_file": out / f"{model}.safetensors"}
    report["warm_read_s"] = warm(list(paths.values()))
    results: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, path in paths.items():
            cmd = [sys.executable, __file__, "--measure", str(path), "--device", device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
            if proc.returncode or not lines:
                results[name].append({"error": (proc.stderr or proc.stdout)[-1500:]})
                continue
            results[name].append(json.loads(lines[-1][len(MARK) :]))
            print(f"{model} {name}: {results[name][-1]}", flush=True)
    report["loads"] = results
    report["median_load_s"] = {name: _median(r, "load_s") for name, r in results.items()}
    report["median_process_s"] = {name: _median(r, "process_s") for name, r in results.items()}
    return report


def _median(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="seed model name (repeatable; default sdxl-base-1.0)")
    p.add_argument("--out", type=Path, default=Path("/tmp/sdplay-weights"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path)
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one timed load in this process
    args = p.parse_args()
    if args.measure:
        print(MARK + json.dumps(measure_once(args.measure, args.device)))
        return 0
    reports = [run(m, args.out, args.runs, args.device) for m in args.model or ["sdxl-base-1.0"]]
    text = json.dumps(reports, indent=2)
    if args.json:
        args.json.write_text(text)
    for r in reports:
        print(f"{r['model']}: median load s {r['median_load_s']}, process s {r['median_process_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
