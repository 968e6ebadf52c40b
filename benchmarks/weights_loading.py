"""Seconds to load a model's weights as users meet them: a diffusers folder and an original-layout single file,
sdplay's loader against plain diffusers on the same files, from a cold and from a warm page cache.

Saves the full-size random weights once (float16 `.safetensors`) in both layouts under `--out`, then times loads in
fresh processes: sdplay's loader (`load_pipeline`, what `Engine.load` runs: files to a pipeline on the device, the
optimisation step included; the fast path compiles lazily, at the first image) and diffusers'
`from_pretrained` / `from_single_file` followed by `.to(device)`. Every timing waits for the device. A cold run
first drops the files from the page cache (`posix_fadvise(DONTNEED)`); warm runs follow a full read. Each record has
the process's import time (torch, diffusers, transformers), the load, the whole process, per-step times of
sdplay's loader, a second load in the same process, peak memory, and a check of sampled tensors against the file.
`sdplay-fresh` is a server's first load: the libraries are imported inside it, while the weights are read.
A reader run times the UNet file alone to the device by sdplay's reader (1-16 threads) and by safetensors.

    python benchmarks/weights_loading.py --model sdxl-base-1.0 --out /tmp/sdplay-weights --json load.json
    python benchmarks/weights_loading.py --device cpu --init quick ...   # CPU: weights stay memory-mapped
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "SDPLAY_LOAD_RESULT "
FAMILIES = {"sd-v1-4": "sd1", "sd-v2-1": "sd2", "sdxl-base-1.0": "sdxl"}
MODULES = {"UNet2DConditionModel": "diffusion_pytorch_model", "AutoencoderKL": "diffusion_pytorch_model",
           "CLIPTextModel": "model", "CLIPTextModelWithProjection": "model"}  # fmt: skip


# --- the files -------------------------------------------------------------------------------------------------


def save(model: str, out: Path, device: str, init: str) -> dict:
    """The random weights as a diffusers folder and as one original-layout file (each skipped if present)."""
    folder, single = out / model, out / f"{model}.safetensors"
    times: dict[str, float] = {}
    if not (folder / "model_index.json").is_file():
        start = time.perf_counter()
        _save_folder(model, folder, device, init)
        times["save_folder_s"] = time.perf_counter() - start
    if not single.is_file():
        start = time.perf_counter()
        _save_single_file(folder, FAMILIES[model], single)
        times["save_single_file_s"] = time.perf_counter() - start
    sizes = {"folder_bytes": sum(p.stat().st_size for p in folder.rglob("*.safetensors")),
             "single_file_bytes": single.stat().st_size}  # fmt: skip
    return {"folder": str(folder), "single_file": str(single), "init": init} | times | sizes


def _save_folder(model: str, folder: Path, device: str, init: str) -> None:
    """init "model": the architecture's own random init (`--random-weights`, usable for generation);
    "quick": normal(0, 1/fan_in) values written tensor by tensor from empty modules (little memory; CPU)."""
    import torch

    from sdplay import catalog, fastload, tensorfiles
    from sdplay.loading import build_random_pipeline, config_folder

    spec = catalog.resolve(model)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(config_folder(spec), tmp)
    index = json.loads((tmp / "model_index.json").read_text())
    for extra in ("safety_checker", "feature_extractor"):  # the random pipeline has none
        if extra in index:
            index[extra] = [None, None]
            shutil.rmtree(tmp / extra, ignore_errors=True)
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    parts = {n: e for n, e in index.items() if isinstance(e, list) and e[1] in MODULES}
    if init == "model":
        pipe = build_random_pipeline(spec, torch.float16, device)
        for name, (_, cls) in parts.items():
            state = getattr(pipe, name).state_dict()
            tensorfiles.save_file(state, tmp / name / f"{MODULES[cls]}.safetensors", {"format": "pt"})
        del pipe
    else:
        gen = torch.Generator().manual_seed(0)
        for name, entry in parts.items():
            module = fastload._empty_module(fastload._library_class(*entry), tmp / name)
            state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in module.state_dict().items()}
            path = tmp / name / f"{MODULES[entry[1]]}.safetensors"
            tensorfiles.save_file(state, path, {"format": "pt"}, fill=lambda k, t: _random(k, t, gen))
    tmp.rename(folder)


def _random(name: str, t, gen):
    import torch

    if name.endswith("bias") or t.ndim == 0:
        return torch.zeros(t.shape, dtype=t.dtype)
    if t.ndim == 1:
        return torch.ones(t.shape, dtype=t.dtype)
    if not t.is_floating_point():
        return torch.zeros(t.shape, dtype=t.dtype)
    return torch.empty(t.shape, dtype=t.dtype).normal_(0, math.prod(t.shape[1:]) ** -0.5, generator=gen)


def _save_single_file(folder: Path, family: str, out: Path) -> None:
    """The folder's weights renamed into the original layout (the tests' converter), written tensor by tensor."""
    from sdplay import tensorfiles

    sys.path.insert(0, str(ROOT / "tests"))
    import singlefile

    singlefile._weights = lambda part: tensorfiles.map_file(next(part.glob("*.safetensors")))  # views, no copies
    tensorfiles.save_file(singlefile.original_state_dict(folder, family), out, {"format": "pt"})


def files_of(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.rglob("*.safetensors"))


def warm(paths: list[Path]) -> float:
    """Read every weight file once, so the timed loads find them in the page cache."""
    start = time.perf_counter()
    for f in paths:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    return time.perf_counter() - start


def drop(paths: list[Path]) -> None:
    """Evict the files from the page cache (their pages are clean once synced), for a cold first read."""
    for f in paths:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --- one timed load, in a fresh process ------------------------------------------------------------------------


def measure_once(path: str, loader: str, device: str, again: bool, configs: str, touch: bool) -> dict:
    started = time.perf_counter()
    import torch

    torch_s = time.perf_counter() - started
    from sdplay import catalog
    from sdplay.devices import discover_devices
    from sdplay.loading import LoadOptions, _import_model_classes, _import_schedulers, load_pipeline

    spec = catalog.resolve(path)
    if loader != "sdplay-fresh":  # libraries imported before the timed load, as a user's script would
        _import_schedulers()
        _import_model_classes(spec)
        import diffusers.loaders.single_file_utils  # noqa: F401
    imported = time.perf_counter()
    dev = next(d for d in discover_devices() if d.id == device or (d.kind == device))
    record: dict = {"loader": loader, "torch_import_s": torch_s, "import_s": imported - started}
    if loader.startswith("sdplay"):  # sdplay-fresh: a server's first load, the imports inside (overlapping reads)
        loaded = load_pipeline(spec, dev, "float16", LoadOptions(safety_checker=False))
        pipe, record["steps"] = loaded.pipe, loaded.load_times
        record["load_s"] = time.perf_counter() - imported
        record["choices"] = {k: str(v) for k, v in loaded.choices.items() if k in ("loader", "source", "fast_path")}
    else:
        pipe = _diffusers_load(spec, path, configs, device, record)
        record["load_s"] = time.perf_counter() - imported
    record["process_s"] = time.perf_counter() - started
    if touch:  # weights stay memory-mapped on the CPU: time reading them once, as a first image would
        start = time.perf_counter()
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            for p in getattr(pipe, name).parameters() if hasattr(pipe, name) else ():
                p.float().sum() if p.dtype != torch.float32 else p.sum()
        record["touch_s"] = time.perf_counter() - start
    record["check"] = check(pipe, path, device)
    record["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if again and loader.startswith("sdplay"):
        del pipe, loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        start = time.perf_counter()
        second = load_pipeline(spec, dev, "float16", LoadOptions(safety_checker=False))
        record["again_s"], record["again_steps"] = time.perf_counter() - start, second.load_times
    return record


def _diffusers_load(spec, path: str, configs: str, device: str, record: dict):
    """Plain diffusers, as its docs show: from_pretrained / from_single_file, then .to(device)."""
    import diffusers
    import torch

    start = time.perf_counter()
    if Path(path).is_dir():
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, dtype=torch.float16, local_files_only=True)
    else:
        cls = getattr(diffusers, spec.pipeline_class)
        pipe = cls.from_single_file(path, config=configs, dtype=torch.float16, local_files_only=True)
    record["steps"] = {"from_pretrained" if Path(path).is_dir() else "from_single_file": time.perf_counter() - start}
    start = time.perf_counter()
    pipe.to(device)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    record["steps"]["to(device)"] = time.perf_counter() - start
    return pipe


def check(pipe, path: str, device: str) -> str:
    """Sampled UNet tensors (every 40th and the largest) equal to the file's (the folder's UNet file for both)."""
    import torch
    from safetensors import safe_open

    folder = Path(path) if Path(path).is_dir() else Path(path).with_suffix("")  # x.safetensors beside x/
    state = pipe.unet.state_dict()
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        names = sorted(f.keys())
        sample = set(names[::40]) | set(sorted(names, key=lambda k: -f.get_slice(k).get_shape()[0])[:5])
        bad = [k for k in sample if k in state and not torch.equal(state[k].cpu(), f.get_tensor(k))]
        missing = [k for k in sample if k not in state]
    return f"{len(sample) - len(bad) - len(missing)}/{len(sample)} equal" + (f", different: {bad[:3]}" if bad else "")


def measure_readers(path: str, device: str) -> dict:
    """The UNet file alone to the device: sdplay's reader at 1-16 threads, safetensors' load_file."""
    import torch
    from safetensors.torch import load_file

    from sdplay import tensorfiles

    size = Path(path).stat().st_size
    out: dict = {"bytes": size}

    def timed(label, fn):
        start = time.perf_counter()
        tensors = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        out[label] = {"s": seconds, "GB/s": size / seconds / 1e9}
        del tensors
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    if device.startswith("cuda"):
        torch.empty(1, device=device)  # CUDA start-up is not the reader's time
    for threads in (1, 4, 8, 16):
        timed(f"sdplay {threads} threads", lambda t=threads: tensorfiles.load_file(path, device, threads=t))
    timed("safetensors load_file(device)", lambda: load_file(path, device=device))
    timed("safetensors load_file(cpu) + .to(device)", lambda: {k: v.to(device) for k, v in load_file(path).items()})
    return out


# --- the schedule ----------------------------------------------------------------------------------------------


def child(args: list[str], timeout: float = 400) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1][len(MARK) :])


def run(model: str, out: Path, args) -> dict:
    runs, device, diffusers_runs, touch = args.runs, args.device, args.diffusers_runs, args.touch
    report: dict = {"model": model, "device": device, "saved": save(model, out, device, args.init)}
    layouts = {"folder": out / model, "single_file": out / f"{model}.safetensors"}
    configs = str(out / model)  # the single file is read with the folder's configs (the same architecture)
    report["warm_read_s"] = warm(files_of(layouts["folder"]) + files_of(layouts["single_file"]))
    unet = str(layouts["folder"] / "unet" / "diffusion_pytorch_model.safetensors")
    report["readers"] = child(["--readers", unet, "--device", device])
    speeds = {k: f"{v['s']:.2f} s" for k, v in report["readers"].items() if isinstance(v, dict)}
    print(f"{model} readers (UNet file): {speeds or report['readers']}", flush=True)
    loads: list[dict] = []

    def one(layout: str, loader: str, cache: str, again: bool = False) -> None:
        path = layouts[layout]
        if cache == "cold":
            drop(files_of(path))
        argv = ["--measure", str(path), "--loader", loader, "--device", device, "--configs", configs]
        extra = (["--again"] if again else []) + (["--touch"] if touch else [])
        record = child([*argv, *extra]) | {"layout": layout, "cache": cache}
        loads.append(record)
        brief = {k: round(v, 2) for k, v in record.items() if k.endswith("_s") and isinstance(v, float)}
        print(f"{model} {layout} {loader} {cache}: {brief} {record.get('check', record.get('error', ''))}", flush=True)
        if cache == "cold":
            warm(files_of(path))

    if not args.no_cold:
        for layout in layouts:
            one(layout, "sdplay", "cold")
    for i in range(runs):
        for layout in layouts:
            one(layout, "sdplay", "warm", again=i == 0)
            if i < diffusers_runs:
                one(layout, "diffusers", "warm")
            if i == 0:
                one(layout, "sdplay-fresh", "warm")
    report["loads"] = loads
    report["summary"] = summarize(loads)
    return report


def summarize(loads: list[dict]) -> list[dict]:
    rows = []
    for key in sorted({(r["layout"], r["loader"], r["cache"]) for r in loads}):
        group = [r for r in loads if (r["layout"], r["loader"], r["cache"]) == key and "load_s" in r]
        if not group:
            rows.append(dict(zip(("layout", "loader", "cache"), key, strict=True)) | {"error": True})
            continue
        row = dict(zip(("layout", "loader", "cache"), key, strict=True)) | {"runs": len(group)}
        for field in ("load_s", "process_s", "import_s", "touch_s", "again_s", "peak_gpu_gib"):
            values = [r[field] for r in group if r.get(field) is not None]
            if values:
                row[field] = round(statistics.median(values), 3)
        mid = sorted(group, key=lambda r: r["load_s"])[len(group) // 2]
        row["steps"] = {k: round(v, 3) for k, v in mid.get("steps", {}).items()}
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    lines = [f"### {report['model']} on {report['device']}", "",
             "| layout | loader | page cache | runs | load s | process s (imports incl.) | imports s | "
             "second load s | peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["summary"]:
        lines.append(f"| {r['layout']} | {r['loader']} | {r['cache']} | {r.get('runs', 0)} | {r.get('load_s', '-')} | "
                     f"{r.get('process_s', '-')} | {r.get('import_s', '-')} | {r.get('again_s', '-')} | "
                     f"{r.get('peak_gpu_gib', '-')} |")  # fmt: skip
    lines.append("")
    for r in report["summary"]:
        if r.get("steps"):
            steps = ", ".join(f"{k} {v}" for k, v in r["steps"].items())
            lines.append(f"- {r['layout']} {r['loader']} {r['cache']}: {steps}")
    readers = report.get("readers", {})
    if "bytes" in readers:
        timings = [f"{k} {v['s']:.2f} s ({v['GB/s']:.1f} GB/s)" for k, v in readers.items() if isinstance(v, dict)]
        head = f"- UNet file alone ({readers['bytes'] / 1e9:.2f} GB) to {report['device']}: "
        lines.append(head + ", ".join(timings))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="seed model name (repeatable; default sdxl-base-1.0)")
    p.add_argument("--out", type=Path, default=Path("/tmp/sdplay-weights"))
    p.add_argument("--runs", type=int, default=2, help="warm sdplay loads per layout")
    p.add_argument("--diffusers-runs", type=int, default=1, help="warm plain-diffusers loads per layout")
    p.add_argument("--no-cold", action="store_true", help="skip the cold page cache loads")
    p.add_argument("--device", default="cuda")
    p.add_argument("--init", choices=("model", "quick"), default="model", help="how the random weights are made")
    p.add_argument("--touch", action="store_true", help="CPU: also time reading every memory-mapped weight once")
    p.add_argument("--json", type=Path)
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one timed load in this process
    p.add_argument("--readers", help=argparse.SUPPRESS)
    p.add_argument("--loader", default="sdplay", help=argparse.SUPPRESS)
    p.add_argument("--configs", help=argparse.SUPPRESS)
    p.add_argument("--again", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        record = measure_once(args.measure, args.loader, args.device, args.again, args.configs, args.touch)
        print(MARK + json.dumps(record))
        return 0
    if args.readers:
        print(MARK + json.dumps(measure_readers(args.readers, args.device)))
        return 0
    reports = []
    for model in args.model or ["sdxl-base-1.0"]:
        reports.append(run(model, args.out, args))
        if args.json:  # written after each model, so a run cut short keeps what it measured
            args.json.write_text(json.dumps(reports, indent=2))
        print(markdown(reports[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
