"""Spec + device -> a ready pipeline: hub id, local folder, single file, or random weights."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdplay import families, fastload
from sdplay.availability import download_command
from sdplay.catalog import ASSETS, Family, ModelSpec
from sdplay.checkpoints import PICKLE_SUFFIXES, pickle_to_safetensors, refuse_pickle
from sdplay.devices import DeviceInfo
from sdplay.errors import ModelNotAvailable
from sdplay.paths import cache_dir

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("vocab.json", "merges.txt")
CHECKER = ("safety_checker", "feature_extractor")


@dataclass(frozen=True)
class LoadOptions:
    """How to load and optimise a pipeline; recorded in every image's metadata."""

    random_weights: bool = False
    allow_pickle: bool = False
    safety_checker: bool = True
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    channels_last: bool | None = None  # None: where it pays (CUDA/XPU)
    fast: bool | None = None  # compiled fast path; None: on where supported
    fast_options: str = ""  # fast-path options, e.g. "deepcache=3,compile=regional" (the edges read $SDPLAY_FAST)
    seed: int = 0  # seed of random weights
    lora_dir: str | None = None  # LoRA .safetensors files (None: the Lora folder under sdplay's model folder)
    embeddings_dir: str | None = None  # textual-inversion files (None: the embeddings folder there)
    vae_dir: str | None = None  # VAE files and folders (None: the VAE folder there)
    ckpt_dir: str | None = None  # checkpoints listed beside the built-in models (None: Stable-diffusion there)
    vae: str | None = None  # the default VAE (a path, or a name in the VAE folder); None: each model's own
    # the light runtime (sdplay.light) for the plans it covers: same images, no diffusers or transformers import;
    # for one-shot runs (the CLI), a long-lived server keeps to the full pipelines
    light: bool = False


@dataclass
class LoadedModel:
    """A pipeline on its device, with what was decided while loading it."""

    spec: ModelSpec
    family_spec: families.FamilySpec  # read from the loaded pipeline (a hub id's family is known only now)
    pipe: Any
    device: DeviceInfo
    dtype: str
    choices: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    load_times: dict[str, float] = field(default_factory=dict)  # seconds per loading step (reading overlaps)
    light: bool = False  # built by sdplay.light: it runs only the plans sdplay.light.covers

    @property
    def family(self) -> Family:
        return self.family_spec.family


def config_folder(spec: ModelSpec) -> Path:
    """A complete weightless diffusers layout for a spec (configs plus the CLIP tokenizer files)."""
    if spec.config_dir is None:
        raise ModelNotAvailable(f"No built-in configuration for {spec.name}.", field="model")
    if (spec.config_dir / "tokenizer" / "vocab.json").exists():
        return spec.config_dir
    out = cache_dir() / "configs" / spec.config_dir.name
    if not (out / "model_index.json").exists():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.copytree(spec.config_dir, tmp, dirs_exist_ok=True)
        for tok in tmp.glob("tokenizer*"):
            for name in TOKENIZER_FILES:
                shutil.copyfile(ASSETS / "clip_tokenizer" / name, tok / name)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def family_of(pipe: Any) -> Family:
    """The pipeline kind, read from the loaded pipeline itself."""
    return families.from_pipeline(pipe).family


# diffusers and transformers import their classes lazily, and those lazy imports are not thread-safe: two engines
# (devices) loading at once could see half-imported modules. Loads are rare, so they take turns.
_LOADING = threading.Lock()


def load_pipeline(
    spec: ModelSpec, device: DeviceInfo, dtype: str, opts: LoadOptions, light: bool = False
) -> LoadedModel:
    """Load a model by whichever route its spec names (`light`: on sdplay.light, for a plan it covers), then apply
    the optimisation step (one load at a time)."""
    with _LOADING:
        start = time.perf_counter()
        if light:
            return _load_pipeline(spec, device, dtype, opts, None, {}, start, light=True)
        reading = _start_reading(spec, device, opts)  # in the background, while the libraries import
        _import_schedulers()
        _import_model_classes(spec)
        times = {"imports": time.perf_counter() - start}
        return _load_pipeline(spec, device, dtype, opts, reading, times, start)


def _import_schedulers() -> None:
    """Resolve every scheduler class of the sampler table now, so generations never import one lazily."""
    import diffusers

    from sdplay.samplers import SAMPLERS

    for sampler in SAMPLERS:
        getattr(diffusers, sampler.scheduler)


def _import_model_classes(spec: ModelSpec) -> None:
    """The pipeline and module classes a load builds (their lazy imports are most of a first load's time)."""
    import diffusers
    import transformers

    for name in (spec.pipeline_class, "UNet2DConditionModel", "AutoencoderKL"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer"):
        getattr(transformers, name)


def _start_reading(spec: ModelSpec, device: DeviceInfo, opts: LoadOptions) -> fastload.Reading | None:
    """Start reading the weights sdplay's own loader can read (None: random weights, hub ids, other layouts)."""
    path = spec.weights_dir
    if opts.random_weights or path is None:
        return None
    import torch  # noqa: F401  imported here, not first in the reading thread

    target = device.id if device.kind == "cuda" and not opts.cpu_offload else "cpu"
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            if not opts.allow_pickle:
                refuse_pickle(path)
            path = pickle_to_safetensors(path, cache_dir() / "converted")
        return fastload.start_reading({"": [path]}, target)
    _check_folder(path)
    try:
        return fastload.start_reading(fastload.folder_files(path, () if opts.safety_checker else CHECKER), target)
    except fastload.Unsupported as exc:
        log.info("diffusers loads %s: %s", path, exc)
        return None


def _load_pipeline(
    spec: ModelSpec,
    device: DeviceInfo,
    dtype: str,
    opts: LoadOptions,
    reading,
    times: dict,
    start: float,
    light: bool = False,
) -> LoadedModel:
    import torch

    from sdplay.optimize import optimize_pipeline

    torch_dtype = getattr(torch, dtype)
    target, loader = (reading.device if reading is not None else "cpu"), "sdplay"
    if light:
        from sdplay import light as light_runtime

        pipe, source = light_runtime.load(spec.weights_dir, dtype), f"folder {spec.weights_dir}"
    elif opts.random_weights:
        pipe, source = build_random_pipeline(spec, torch_dtype, device.id, opts.seed), "random weights"
    elif spec.weights_dir is not None and spec.weights_dir.is_file():
        pipe, loader = _load_single_file(spec, torch_dtype, reading, target, times)
        source = f"single file {spec.weights_dir}"
    elif spec.weights_dir is not None:
        pipe, loader = _load_folder(spec.weights_dir, torch_dtype, reading, target, times)
        source = f"folder {spec.weights_dir}"
    else:
        pipe, source, loader = _load_hub(spec, torch_dtype), f"hub {spec.repo_id}", "diffusers"
    if opts.random_weights:
        loader = "sdplay (random weights)"
    family = families.from_pipeline(pipe)
    if spec.inpainting and family.family != spec.family:  # SD 2.x inpainting predicts noise, as SD 1.x does;
        family = spec.family_spec  # the single file's tensor names said which family it is
    choices = {"source": source, "random_weights": opts.random_weights, "loader": loader}
    built = time.perf_counter()
    choices |= optimize_pipeline(pipe, device, torch_dtype, opts, family)
    if loader == "sdplay" and not opts.safety_checker and _has_checker(spec):  # left unread, not dropped
        choices["safety_checker"] = "off (turned off by the user)"
    _synchronize(device)
    times["optimisation step"] = time.perf_counter() - built
    elapsed = time.perf_counter() - start
    return LoadedModel(spec, family, pipe, device, dtype, choices, elapsed, dict(pipe.scheduler.config), times, light)


def _has_checker(spec: ModelSpec) -> bool:
    folder = spec.weights_dir
    if folder is None or not folder.is_dir():
        return False
    return json.loads((folder / "model_index.json").read_text()).get("safety_checker", [None])[0] is not None


def _synchronize(device: DeviceInfo) -> None:
    """Wait for the device's queued copies and casts, so the load time is the time to a usable model."""
    import torch

    if device.kind == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device.id)


def _pipeline_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _load_folder(folder: Path, torch_dtype, reading, target: str, times: dict) -> tuple[Any, str]:
    """The folder's pipeline and the loader that read it: sdplay's own where it can, else diffusers'."""
    from diffusers import DiffusionPipeline

    try:
        if reading is not None:
            try:
                return fastload.build_folder(folder, reading, target, torch_dtype, times), "sdplay"
            except fastload.Unsupported as exc:
                log.info("diffusers loads %s: %s", folder, exc)
                reading.discard()
        return DiffusionPipeline.from_pretrained(str(folder), dtype=torch_dtype, local_files_only=True), "diffusers"
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(
            f"Could not load the model folder {folder}: {exc}",
            field="model",
            hint="Check it is a complete diffusers folder (model_index.json, unet/, vae/, text_encoder/, "
            "tokenizer/, scheduler/ with their weights).",
        ) from exc


def _check_folder(folder: Path) -> None:
    """Name the first missing piece of a diffusers folder before diffusers fails obscurely."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelNotAvailable(f"{folder} has no model_index.json.", field="model")
    for component, entry in json.loads(index.read_text()).items():
        if component.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        sub = folder / component
        if not sub.is_dir():
            raise ModelNotAvailable(f"{folder} is incomplete: the folder {component}/ is missing.", field="model")
        if component in ("unet", "vae", "text_encoder", "text_encoder_2", "safety_checker") and not any(
            p.suffix in (".safetensors", ".bin") for p in sub.iterdir()
        ):
            raise ModelNotAvailable(
                f"{folder} is incomplete: {component}/ has no weights (*.safetensors).",
                field="model",
                hint="Download the weights too, or use --random-weights to try the architecture without them.",
            )


def _load_single_file(spec: ModelSpec, torch_dtype, reading, target: str, times: dict) -> tuple[Any, str]:
    """The checkpoint's pipeline (a pickle arrives converted) and the loader that read it."""
    path = spec.weights_dir
    assert path is not None and reading is not None
    base = builtin_config(spec)
    if spec.inpainting:
        base = inpainting_config(base, spec)
    try:
        try:
            family, cls_name = spec.family_spec, spec.pipeline_class
            return fastload.build_single_file(base, family, cls_name, reading, target, torch_dtype, times), "sdplay"
        except fastload.Unsupported as exc:
            log.info("diffusers loads %s: %s", path, exc)
            reading.discard()
        file = str(reading.files[""][0])
        cls = _pipeline_class(spec.pipeline_class)
        return cls.from_single_file(file, config=str(base), dtype=torch_dtype, local_files_only=True), "diffusers"
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotAvailable(
            f"Could not load the checkpoint {spec.weights_dir}: {exc}",
            field="model",
            hint="sdplay reads original-layout SD 1.x, 2.x and XL checkpoints; for other layouts convert to a "
            "diffusers folder and point at it. A checkpoint of a non-standard size needs its diffusers configs "
            f"in a folder beside it: {spec.weights_dir.with_suffix('')}/model_index.json, unet/config.json, ...",
        ) from exc


def builtin_config(spec: ModelSpec) -> Path:
    """The configs to read a single file with: its own folder beside it if it has one, else the built-in ones."""
    if spec.config_dir is not None and spec.config_dir.parent != ASSETS / "configs":
        return spec.config_dir
    from sdplay.catalog import builtin

    base = builtin(Path(spec.config_dir).name) if spec.config_dir else None
    return config_folder(base or spec)


def inpainting_config(folder: Path, spec: ModelSpec) -> Path:
    """The configs of a dedicated inpainting model: the family's built-in configs (or the file's own) with a
    9-channel UNet under the family's inpainting pipeline; from built-in configs also the spec's prediction type
    and native size (SD 2.x inpainting: epsilon at 512), as the published inpainting models' configs say."""
    import hashlib

    from sdplay.checkpoints import INPAINTING_IN_CHANNELS

    builtin_configs = spec.config_dir is None or spec.config_dir.parent == ASSETS / "configs"
    key = f"{folder.resolve()}:{builtin_configs}:{spec.prediction_type}:{spec.native_size}:{spec.pipeline_class}"
    out = cache_dir() / "configs" / f"{folder.name}-inpainting-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "model_index.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"), dirs_exist_ok=True)
    _edit_json(tmp / "model_index.json", _class_name=spec.pipeline_class)
    unet = {"in_channels": INPAINTING_IN_CHANNELS}
    if builtin_configs:
        scale = 2 ** (len(_read_json(tmp / "vae" / "config.json")["block_out_channels"]) - 1)
        unet["sample_size"] = spec.native_size // scale
        _edit_json(tmp / "scheduler" / "scheduler_config.json", prediction_type=spec.prediction_type)
    _edit_json(tmp / "unet" / "config.json", **unet)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps(_read_json(path) | changes, indent=2))


def _load_hub(spec: ModelSpec, torch_dtype) -> Any:
    from diffusers import DiffusionPipeline

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return DiffusionPipeline.from_pretrained(spec.repo_id, dtype=torch_dtype, local_files_only=offline)
    except Exception as exc:  # hub errors come in many types; all mean "not here"
        raise ModelNotAvailable(
            f"The weights of {spec.name} ({spec.repo_id}) are not on this machine"
            + (" and HF_HUB_OFFLINE is set." if offline else " and could not be downloaded."),
            field="model",
            hint=f"On a machine with internet run `{download_command(spec.repo_id)}` (it fills "
            "~/.cache/huggingface, which you can copy here), or pass a local diffusers folder or .safetensors file "
            "as the model; `--random-weights` runs the architecture without real weights.",
        ) from exc


def build_random_pipeline(spec: ModelSpec, torch_dtype, device: str = "cpu", seed: int = 0) -> Any:
    """The full architecture from the built-in configs with random weights (benchmarks, memory planning)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = config_folder(spec) if spec.config_dir and spec.config_dir.parent.name == "configs" else spec.config_dir
    assert folder is not None
    index = json.loads((folder / "model_index.json").read_text())
    torch.manual_seed(seed)
    parts: dict[str, Any] = {}
    with torch.device(device):
        parts["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        parts["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        for name in ("text_encoder", "text_encoder_2"):
            if name in index:
                cls = CLIPTextModelWithProjection if index[name][1] == "CLIPTextModelWithProjection" else CLIPTextModel
                parts[name] = cls(CLIPTextConfig.from_pretrained(folder / name))
    for name in ("tokenizer", "tokenizer_2"):
        if name in index:
            parts[name] = CLIPTokenizer.from_pretrained(folder / name)
    for module in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if module in parts:
            parts[module] = parts[module].to(dtype=torch_dtype).eval()
    return _assemble(spec, folder, index, parts)


def _assemble(spec: ModelSpec, folder: Path, index: dict, parts: dict[str, Any]) -> Any:
    import diffusers

    sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    parts["scheduler"] = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    cls = getattr(diffusers, index["_class_name"])
    return cls(**parts, **spec.family_spec.pipeline_kwargs(index))
