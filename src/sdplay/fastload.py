"""Pipelines from `.safetensors` weights, fast: modules built empty (no random init), every weight file read once,
in parallel and straight to the device while the libraries import, then handed to the modules (no copies).

Reads diffusers folders (model_index.json and a subfolder per component) and original-layout single files of the
SD 1.x/2.x/XL families, whose keys are renamed with diffusers' own converters. Anything else — pickled weights,
only variant files, classes outside diffusers and transformers — raises `Unsupported`, and diffusers' loaders
take it.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdplay import tensorfiles
from sdplay.families import FamilySpec

log = logging.getLogger(__name__)

WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' file names
CHECKER_PARTS = ("safety_checker", "feature_extractor")


class Unsupported(Exception):
    """A layout this loader does not read (diffusers' loaders take it)."""


@dataclass
class Reading:
    """Weight files being read in a background thread: component ("" for a single file) -> its files."""

    files: dict[str, list[Path]]
    device: str
    future: Future
    started: float = field(default_factory=time.perf_counter)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for paths in self.files.values() for p in paths)

    def discard(self) -> None:
        """Wait for the reading and drop what it read (diffusers' loaders read the files instead)."""
        self.future.exception()
        self.future = Future()  # the old future, the only holder of the tensors, goes

    def tensors(self, times: dict[str, float]) -> dict[str, dict[str, Any]]:
        """component -> its tensors (shards merged), once read; records the wait and the reading's own time."""
        start = time.perf_counter()
        chunks, finished = self.future.result()
        times["wait for weights"] = time.perf_counter() - start
        times["read weights (background)"] = finished - self.started
        out: dict[str, dict[str, Any]] = {}
        for (name, _), tensors in zip(((n, p) for n, ps in self.files.items() for p in ps), chunks, strict=True):
            out.setdefault(name, {}).update(tensors)
        return out


def start_reading(files: dict[str, list[Path]], device: str) -> Reading:
    """Read every file in a background thread: on CUDA straight to the device, elsewhere memory-mapped."""
    paths = [p for ps in files.values() for p in ps]

    def read() -> tuple[list[dict[str, Any]], float]:
        if device.startswith("cuda"):
            chunks = tensorfiles.load_files(paths, device)
        else:  # the CPU (and devices the optimisation step moves to): views of the page cache, read on first use
            chunks = [tensorfiles.map_file(p) for p in paths]
        return chunks, time.perf_counter()

    pool = ThreadPoolExecutor(1, thread_name_prefix="sdplay-read")
    future = pool.submit(read)
    pool.shutdown(wait=False)
    return Reading(files, device, future)


def folder_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, list[Path]]:
    """component -> its .safetensors files, for every component of a diffusers folder that holds a model."""
    index = json.loads((folder / "model_index.json").read_text())
    files: dict[str, list[Path]] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry or name in skip:
            continue
        sub = folder / name
        if not (sub / "config.json").is_file():
            continue  # tokenizers, schedulers and processors hold no weights
        files[name] = _component_files(sub)
    return files


def _component_files(sub: Path) -> list[Path]:
    for stem in WEIGHT_STEMS:
        if (sub / f"{stem}.safetensors").is_file():
            return [sub / f"{stem}.safetensors"]
        index = sub / f"{stem}.safetensors.index.json"
        if index.is_file():  # sharded
            return [sub / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    raise Unsupported(f"{sub} has no plain .safetensors weights")


def build_folder(folder: Path, reading: Reading, device: str, dtype, times: dict[str, float]) -> Any:
    """The folder's pipeline, every model component filled from `reading` (components it skipped are None)."""
    index = json.loads((folder / "model_index.json").read_text())
    cls = _pipeline_class(index.get("_class_name", ""))
    parts: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue
        if None in entry or (name in CHECKER_PARTS and "safety_checker" not in reading.files):
            parts[name] = None
            continue
        parts[name] = _component(entry, folder / name, name in reading.files, times, name)
    tensors = reading.tensors(times)
    for name in reading.files:
        _fill(parts[name], tensors.pop(name), device, dtype, name, times)
    config = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    if parts.get("safety_checker") is None and "requires_safety_checker" in config:
        config["requires_safety_checker"] = False  # no checker on purpose: diffusers need not warn about it
    return _assemble(cls, parts, config, times)


def build_single_file(
    configs: Path, family: FamilySpec, pipeline: str, reading: Reading, device: str, dtype, times: dict[str, float]
) -> Any:
    """A pipeline from an original-layout checkpoint, its modules described by the diffusers configs in `configs`."""
    index = json.loads((configs / "model_index.json").read_text())
    parts: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry or name in CHECKER_PARTS:
            continue  # single files carry no safety checker (diffusers' from_single_file leaves it out too)
        parts[name] = _component(entry, configs / name, (configs / name / "config.json").is_file(), times, name)
    checkpoint = reading.tensors(times)[""]
    start = time.perf_counter()
    states = convert_single_file(checkpoint, parts, family)
    times["convert keys"] = time.perf_counter() - start
    for name, state in states.items():
        _fill(parts[name], state, device, dtype, name, times)
    if unfilled := [n for n, p in parts.items() if hasattr(p, "state_dict") and n not in states]:
        raise Unsupported(f"no single-file converter for {unfilled}")
    return _assemble(_pipeline_class(pipeline), parts, family.pipeline_kwargs(index), times)


def convert_single_file(checkpoint: dict[str, Any], parts: dict[str, Any], family: FamilySpec) -> dict[str, dict]:
    """Original-layout tensors -> one diffusers state dict per module (renames and views; nothing is copied)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    states = {
        "unet": convert_ldm_unet_checkpoint(checkpoint, dict(parts["unet"].config)),
        "vae": convert_ldm_vae_checkpoint(checkpoint, dict(parts["vae"].config)),
    }
    for name, kind, prefix in family.single_file_text_encoders:
        if kind == "openclip":
            states[name] = open_clip_state(checkpoint, prefix)
        else:
            states[name] = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    return states


def open_clip_state(checkpoint: dict[str, Any], prefix: str) -> dict[str, Any]:
    """An OpenCLIP text tower in transformers' CLIP names, by diffusers' mapping; the fused `in_proj` is split
    into q/k/v views rather than copies (diffusers' converter clones them). Tensors the model has no place
    for (SD 2.x's unused last layer and projection) are dropped when the state is assigned."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    mapping = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    state = {}
    for new, old in mapping["layers"].items():
        if prefix + old in checkpoint:
            value = checkpoint[prefix + old]
            state[new] = value.T.contiguous() if old == "text_projection" else value  # OpenCLIP: x @ projection
    inner = prefix + "transformer."
    for key, value in checkpoint.items():
        if not key.startswith(inner):
            continue
        new = key[len(inner) :]
        for name, old in mapping["transformer"].items():
            new = new.replace(old, name)
        for kind in ("weight", "bias"):
            if new.endswith(f".in_proj_{kind}"):
                base, width = new.removesuffix(f".in_proj_{kind}"), value.shape[0] // 3  # (3 * width, width)
                for i, proj in enumerate("qkv"):
                    state[f"{base}.{proj}_proj.{kind}"] = value[i * width : (i + 1) * width]
                break
        else:
            state[new] = value
    return state


def _pipeline_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None) if name else None
    if not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        raise Unsupported(f"pipeline class {name!r}")
    return cls


def _library_class(library: str, name: str):
    """A component class, found where diffusers' own loader looks for it."""
    import importlib

    modules = {"diffusers": "diffusers", "transformers": "transformers",
               "stable_diffusion": "diffusers.pipelines.stable_diffusion"}  # fmt: skip
    if library not in modules:
        raise Unsupported(f"component library {library!r}")
    cls = getattr(importlib.import_module(modules[library]), name, None)
    if cls is None:
        raise Unsupported(f"component class {library}.{name}")
    return cls


def _component(entry: list, sub: Path, has_weights: bool, times: dict[str, float], name: str) -> Any:
    """An empty module for a weight-bearing component; anything else (tokenizer, scheduler) as diffusers loads it."""
    import torch

    start = time.perf_counter()
    cls = _library_class(*entry)
    is_module = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
    if is_module != has_weights:
        raise Unsupported(f"{sub}: {entry[1]} {'without' if is_module else 'with'} weights")
    part = _empty_module(cls, sub) if is_module else cls.from_pretrained(sub)
    times[f"build {name}"] = time.perf_counter() - start
    return part


def _empty_module(cls, sub: Path) -> Any:
    """The module from its config with parameters on the meta device: no memory, no random init."""
    from accelerate import init_empty_weights

    with _no_init(), init_empty_weights(include_buffers=False):
        if hasattr(cls, "load_config"):  # a diffusers model
            return cls.from_config(cls.load_config(sub))
        return cls(cls.config_class.from_pretrained(sub))  # a transformers model


INIT_FUNCTIONS = ("uniform_", "normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
                  "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_",
                  "sparse_")  # fmt: skip


@contextmanager
def _no_init():
    """torch's init functions and transformers' `init_weights` do nothing (even on meta tensors they cost time)."""
    import torch.nn.init as init
    from transformers import PreTrainedModel

    saved = {name: getattr(init, name) for name in INIT_FUNCTIONS if hasattr(init, name)}
    init_weights = PreTrainedModel.init_weights
    try:
        for name in saved:
            setattr(init, name, _unchanged)
        PreTrainedModel.init_weights = _unchanged
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)
        PreTrainedModel.init_weights = init_weights


def _unchanged(tensor=None, *args, **kwargs):
    return tensor


def _fill(module: Any, state: dict[str, Any], device: str, dtype, name: str, times: dict[str, float]) -> None:
    """Hand the tensors to the module's empty parameters (assign: the loaded tensors become the parameters)."""
    import torch

    start = time.perf_counter()
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    expected = module.state_dict(keep_vars=True)
    state = _align(state, expected)
    if hasattr(module, "_fix_state_dict_keys_on_load"):
        module._fix_state_dict_keys_on_load(state)  # diffusers' renames of old attention blocks
    wrong = [f"{k} {tuple(v.shape)} (the model wants {tuple(expected[k].shape)})"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise ValueError(f"{name}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[0]}")
    for key, value in state.items():
        if value.is_floating_point() and key in expected:
            want = torch.float32 if keep and any(m in key.split(".") for m in keep) else dtype
            if value.dtype != want:
                state[key] = value.to(want)
    _, unexpected = module.load_state_dict(state, strict=False, assign=True)
    empty = [k for k, v in module.state_dict(keep_vars=True).items() if v.is_meta]
    if empty:  # names this loader does not know how to map: diffusers' loaders may
        raise Unsupported(f"{name}: no tensor for {len(empty)} parameters, e.g. {empty[0]}")
    if unexpected:
        log.debug("%s: ignored %d tensors the model has no place for, e.g. %s", name, len(unexpected), unexpected[0])
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    for sub in module.modules():  # buffers were built on the CPU; the parameters are already in place
        for key, buf in sub._buffers.items():
            if buf is not None:
                cast = dtype if buf.is_floating_point() and not keep else buf.dtype
                sub._buffers[key] = buf.to(device=device, dtype=cast)
    module.eval().requires_grad_(False)
    times[f"assign {name}"] = time.perf_counter() - start


# transformers >= 5.6 flattened CLIPTextModel and CLIPVisionModel: their checkpoints name tensors with or without
# the inner `text_model.` / `vision_model.`, by the version that wrote them.
_WRAPPERS = ("text_model.", "vision_model.")


def _align(state: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint keys renamed to the module's own names where they differ only by a CLIP wrapper prefix."""
    out = {}
    for key, value in state.items():
        if key not in expected:
            key = next((c for c in _candidates(key) if c in expected), key)
        out[key] = value
    return out


def _candidates(key: str):
    for wrapper in _WRAPPERS:
        at = key.find(wrapper)
        if at == 0 or (at > 0 and key[at - 1] == "."):
            yield key[:at] + key[at + len(wrapper) :]  # the wrapper dropped
            yield key[:at] + wrapper + key[at:]  # the wrapper doubled (vision_model.vision_model.)
    yield "text_model." + key


def _assemble(cls, parts: dict[str, Any], config: dict[str, Any], times: dict[str, float]) -> Any:
    import inspect

    start = time.perf_counter()
    accepted = inspect.signature(cls.__init__).parameters
    pipe = cls(**parts, **{k: v for k, v in config.items() if k in accepted})
    times["assemble pipeline"] = time.perf_counter() - start
    return pipe
