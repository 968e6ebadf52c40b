"""Diffusers model folders: check one is complete, load its parts for training, write a new one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from sdplay import families
from sdplay.catalog import ASSETS
from sdplay.errors import ModelNotAvailable

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
WEIGHT_FILES = {
    "text_encoder": ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"),
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"),
}
_HINT = "Re-export the model (sdplay train), or copy the missing file from the original folder."


def check_folder(folder: Path) -> None:
    """Raise ModelNotAvailable naming the first file an SD1/SD2-style diffusers folder lacks."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelNotAvailable(f"{index} is missing: {folder} is not a complete diffusers folder.", hint=_HINT)
    try:
        info = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotAvailable(f"{index} is not valid JSON ({exc}).", hint=_HINT) from exc
    family = families.from_index(str(info.get("_class_name", "")), "epsilon", None)
    if len(family.text_encoders) > 1:
        raise ModelNotAvailable(
            f"{folder} is an {family.short_label} folder; training supports SD1/SD2-style folders (one text encoder).",
            hint="Fine-tune sdplay-emoji or an SD v1/v2 diffusers folder.",
        )
    needed = [folder / "scheduler" / "scheduler_config.json", folder / "tokenizer" / "vocab.json"]
    needed += [folder / "tokenizer" / "merges.txt"] + [folder / part / "config.json" for part in WEIGHT_FILES]
    for path in needed:
        if not path.is_file():
            raise ModelNotAvailable(f"{path} is missing: {folder} is not a complete diffusers folder.", hint=_HINT)
    for part, names in WEIGHT_FILES.items():
        if not any((folder / part / name).is_file() for name in names):
            raise ModelNotAvailable(
                f"{folder / part / names[0]} is missing: {folder} has no {part} weights.", hint=_HINT
            )


def model_folder(name_or_path: str) -> Path:
    """The local folder of a built-in model name or a path, checked to be complete."""
    from sdplay.catalog import resolve

    spec = resolve(name_or_path)
    folder = spec.weights_dir if spec.weights_dir and spec.weights_dir.is_dir() else None
    if folder is None:
        raise ModelNotAvailable(
            f"{name_or_path!r} has no local diffusers folder to train from.",
            hint="Pass `sdplay-emoji` or the path of a diffusers folder (with model_index.json, unet/, vae/ ...).",
        )
    check_folder(folder)
    return folder


def load_parts(folder: Path):
    """Text encoder, UNet and VAE of a checked folder, in float32, plus its tokenizer and scheduler config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    check_folder(folder)
    try:
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(folder / "vae", dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelNotAvailable(f"Cannot load the model in {folder}: {exc}", hint=_HINT) from exc
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return te, unet, vae, tokenizer, scheduler


def default_tokenizer_dir() -> Path:
    """The real CLIP tokenizer shipped with sdplay (the seed models' vocab and merges)."""
    return ASSETS / "clip_tokenizer"


def load_tokenizer(folder: Path | None = None):
    """A CLIPTokenizer from a folder holding vocab.json and merges.txt (default: the shipped one)."""
    import tempfile

    from transformers import CLIPTokenizer

    folder = folder or default_tokenizer_dir()
    if (folder / "tokenizer_config.json").is_file():
        return CLIPTokenizer.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(folder, Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp)


def _write_tokenizer(src: Path, dest: Path) -> None:
    """Copy the vocabulary and merges, and write SD v1's tokenizer configuration beside them."""
    dest.mkdir(parents=True, exist_ok=True)
    sd14 = ASSETS / "configs" / "sd-v1-4" / "tokenizer"
    for name in TOKENIZER_FILES:
        origin = src / name if (src / name).is_file() else sd14 / name
        shutil.copyfile(origin, dest / name)


def write_model(
    folder: Path,
    text_encoder,
    unet,
    vae,
    scheduler: dict,
    tokenizer_dir: Path | None = None,
    readme: str = "",
    dtype: torch.dtype = torch.float16,
    vocabulary: list[str] | None = None,
) -> Path:
    """Write a diffusers StableDiffusionPipeline folder (safetensors in `dtype`), replacing `folder` atomically."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae)):
        copy = _cast_copy(module, dtype)
        copy.save_pretrained(tmp / name, safe_serialization=True)
    _write_tokenizer(tokenizer_dir or default_tokenizer_dir(), tmp / "tokenizer")
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    (tmp / "model_index.json").write_text(json.dumps(model_index(scheduler["_class_name"]), indent=2) + "\n")
    if readme:
        (tmp / "README.md").write_text(readme)
    if vocabulary:
        from sdplay.vocabulary import write_vocabulary

        write_vocabulary(tmp, vocabulary)
    check_folder(tmp)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _cast_copy(module, dtype: torch.dtype):
    """A CPU copy of `module` in `dtype`, leaving the original (still training) untouched."""
    import copy

    return copy.deepcopy(module).to("cpu", dtype=dtype)


def model_index(scheduler_class: str) -> dict:
    """model_index.json of an SD1-style pipeline with no safety checker."""
    from diffusers import __version__

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": __version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def folder_size(folder: Path) -> int:
    """Bytes of all files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
