"""Dedicated inpainting checkpoints (a 9-channel UNet: latents + mask + masked-image latents) as original-layout
single files, for SD 1.x, 2.x and XL: detected from the UNet's input conv, loaded with the family's diffusers
inpainting pipeline, and run for inpainting, image-to-image and text-to-image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from singlefile import copy_configs, widen_second_text_encoder, write_single_file

from sdplay import catalog
from sdplay.catalog import Family
from sdplay.checkpoints import inspect_checkpoint
from sdplay.types import GenerationRequest

FAMILIES = ("sd1", "sd2", "sdxl")
INPAINT_CLASS = {"sd1": "StableDiffusionInpaintPipeline", "sd2": "StableDiffusionInpaintPipeline",
                 "sdxl": "StableDiffusionXLInpaintPipeline"}  # fmt: skip


def _nine_channel(folder: Path, out: Path, seed: int = 3) -> Path:
    """A copy of a tiny folder whose UNet takes 9 input channels (random weights)."""
    import torch
    from diffusers import UNet2DConditionModel

    shutil.copytree(folder, out)
    cfg = json.loads((out / "unet" / "config.json").read_text()) | {"in_channels": 9}
    torch.manual_seed(seed)
    UNet2DConditionModel.from_config(cfg).save_pretrained(out / "unet", safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def inpainting_files(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Per family: a 9-channel checkpoint in the original layout, with the configs of the plain (4-channel) tiny
    model beside it, as a user who has the base model's configs would have them."""
    root = tmp_path_factory.mktemp("inpainting-single-file")
    out = {}
    for family, folder in tiny_models.items():
        if family == "sdxl":  # diffusers tells SDXL's two encoders apart by width, as in the real model
            folder = widen_second_text_encoder(shutil.copytree(folder, root / "sdxl-plain"))
        nine = _nine_channel(folder, root / f"{family}-nine")
        path = write_single_file(nine, family, root / f"{family}-inpainting.safetensors")
        copy_configs(folder, root / f"{family}-inpainting")
        out[family] = path
    return out


def picture() -> Image.Image:
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, :32], arr[:, 32:] = (220, 30, 30), (30, 30, 220)
    return Image.fromarray(arr)


def left_mask() -> Image.Image:
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    return mask


def _req(path: Path, **kw) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a red heart", "model": str(path), "steps": 3, "seed": 2, "sampler": "Euler",
                                 "guidance": 5.0} | kw))  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_nine_channel_single_file_is_detected(inpainting_files, family):
    path = inpainting_files[family]
    spec_family, channels = inspect_checkpoint(path)
    assert (spec_family.family, channels) == (Family(family), 9)
    spec = catalog.resolve(str(path))
    assert spec.inpainting and spec.family == Family(family)
    assert spec.pipeline_class == INPAINT_CLASS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_nine_channel_single_file_runs_with_the_inpainting_pipeline(engine, inpainting_files, family):
    path = inpainting_files[family]
    kw = {"init_image": picture(), "mask": left_mask(), "strength": 1.0, "mask_blur": 4}
    a, b = engine.generate(_req(path, **kw)), engine.generate(_req(path, **kw))
    out = np.asarray(a.images[0]).astype(int)
    assert np.array_equal(out, np.asarray(b.images[0]).astype(int))
    assert np.array_equal(out[:, 48:], np.asarray(picture()).astype(int)[:, 48:])  # kept outside the blurred mask
    assert np.abs(out[:, :16] - np.asarray(picture()).astype(int)[:, :16]).mean() > 5  # the masked half repainted
    assert a.metadata["family"] == family and not a.metadata["warnings"]
    assert a.metadata["optimisation"]["source"] == f"single file {path}"
    loaded = engine.load(str(path))[0]
    assert type(loaded.pipe).__name__ == INPAINT_CLASS[family] and loaded.pipe.unet.config.in_channels == 9
    img2img = engine.generate(_req(path, init_image=picture(), strength=0.6))
    plain = engine.generate(_req(path, width=64, height=64))
    assert img2img.images[0].size == plain.images[0].size == (64, 64)


def test_without_configs_beside_it_the_family_configs_become_inpainting_ones(inpainting_files, tmp_path):
    """SD 2.x inpainting (stabilityai/stable-diffusion-2-inpainting) predicts noise at 512, unlike SD 2.1."""
    from sdplay.loading import builtin_config, inpainting_config

    lone = tmp_path / "sd2-inpainting.safetensors"
    shutil.copyfile(inpainting_files["sd2"], lone)
    spec = catalog.resolve(str(lone))
    assert spec.inpainting and spec.config_dir == catalog.builtin("sd-v2-1").config_dir
    assert (spec.prediction_type, spec.native_size) == ("epsilon", 512)
    folder = inpainting_config(builtin_config(spec), spec)
    read = lambda sub: json.loads((folder / sub).read_text())  # noqa: E731
    assert read("model_index.json")["_class_name"] == "StableDiffusionInpaintPipeline"
    assert read("unet/config.json")["in_channels"] == 9 and read("unet/config.json")["sample_size"] == 64
    assert read("scheduler/scheduler_config.json")["prediction_type"] == "epsilon"
    assert (folder / "tokenizer" / "vocab.json").is_file()
    sdxl = tmp_path / "sdxl-inpainting.safetensors"
    shutil.copyfile(inpainting_files["sdxl"], sdxl)
    spec = catalog.resolve(str(sdxl))
    assert (spec.native_size, spec.prediction_type) == (1024, "epsilon")
    unet = json.loads((inpainting_config(builtin_config(spec), spec) / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 9 and unet["sample_size"] == 128
