"""SDXL refiner handoff on tiny random models: a base SDXL runs the first steps (denoising_end), a refiner-shaped
model (second text encoder only, aesthetic-score conditioning, as stabilityai/stable-diffusion-xl-refiner-1.0)
finishes them in latent space (denoising_start)."""

import json
import shutil

import numpy as np
import pytest

from sdplay.errors import InvalidRequest
from sdplay.images import parameters_for, parse_parameters
from sdplay.types import GenerationRequest


@pytest.fixture(scope="module")
def tiny_refiner(tmp_path_factory, tiny_models):
    """The refiner's published layout, shrunk: no first text encoder, UNet cross-attention on the second
    encoder's width, add-embedding of 5 time ids (sizes, crop, aesthetic score) + the pooled text."""
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    out = tmp_path_factory.mktemp("refiner") / "sdxl-refiner"
    shutil.copytree(tiny_models["sdxl"], out)
    for name in ("text_encoder", "tokenizer"):
        shutil.rmtree(out / name)
    cfg = json.loads((out / "unet" / "config.json").read_text())
    te2 = json.loads((out / "text_encoder_2" / "config.json").read_text())
    add_dim = 5 * cfg["addition_time_embed_dim"] + te2["projection_dim"]
    cfg |= {"cross_attention_dim": te2["hidden_size"], "projection_class_embeddings_input_dim": add_dim}
    torch.manual_seed(1)
    UNet2DConditionModel.from_config(cfg).save_pretrained(out / "unet", safe_serialization=True)
    index = json.loads((out / "model_index.json").read_text())
    index |= {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]}
    index |= {"tokenizer": [None, None], "requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
    (out / "model_index.json").write_text(json.dumps(index))
    DiffusionPipeline.from_pretrained(out, local_files_only=True)
    return out


def req(model, **kw):
    return GenerationRequest(**({"prompt": "a red heart", "model": str(model), "steps": 5, "seed": 4,
                                 "width": 64, "height": 64} | kw))  # fmt: skip


def test_refiner_takes_the_last_steps(engine, tiny_models, tiny_refiner):
    seen = []
    a = engine.generate(req(tiny_models["sdxl"], refiner=str(tiny_refiner), refiner_switch_at=0.6), on_step=seen.append)
    b = engine.generate(req(tiny_models["sdxl"], refiner=str(tiny_refiner), refiner_switch_at=0.6))
    plain = engine.generate(req(tiny_models["sdxl"]))
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert np.abs(np.asarray(a.images[0]).astype(int) - np.asarray(plain.images[0]).astype(int)).mean() > 0.5
    assert [s.step for s in seen] == [1, 2, 3, 4, 5]  # 3 base steps, then 2 refiner steps
    fields = parse_parameters(parameters_for(a, 0))
    assert fields["Refiner"] == str(tiny_refiner) and fields["Refiner switch at"] == "0.6"


def test_refiner_needs_sdxl_and_no_mask(engine, tiny_models, tiny_refiner):
    with pytest.raises(InvalidRequest, match="not an SDXL model"):
        engine.generate(req(tiny_models["sd1"], refiner=str(tiny_refiner)))
    from PIL import Image

    img, mask = Image.new("RGB", (64, 64)), Image.new("L", (64, 64))
    with pytest.raises(InvalidRequest, match="not after inpainting"):
        engine.generate(req(tiny_models["sdxl"], refiner=str(tiny_refiner), init_image=img, mask=mask))


def test_refiner_after_image_to_image_takes_the_last_of_the_steps_run(engine, tiny_models, tiny_refiner):
    from PIL import Image

    from sdplay.image_input import image_hash
    from sdplay.passes import refiner_handoff

    assert refiner_handoff("txt2img", 1.0, 0.8) == 0.8
    assert refiner_handoff("img2img", 0.5, 0.8) == pytest.approx(0.9)  # 1 - 0.5 * (1 - 0.8)
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    kw = {"init_image": init, "strength": 0.6, "steps": 10}
    seen = []
    a = engine.generate(req(tiny_models["sdxl"], refiner=str(tiny_refiner), refiner_switch_at=0.5, **kw),
                        on_step=seen.append)  # fmt: skip
    b = engine.generate(req(tiny_models["sdxl"], refiner=str(tiny_refiner), refiner_switch_at=0.5, **kw))
    plain = engine.generate(req(tiny_models["sdxl"], **kw))
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert np.abs(np.asarray(a.images[0]).astype(int) - np.asarray(plain.images[0]).astype(int)).mean() > 0.5
    assert [s.step for s in seen] == [1, 2, 3, 4, 5, 6]  # the 6 steps of strength 0.6: 3 base + 3 refiner
    fields = parse_parameters(parameters_for(a, 0))
    assert fields["Refiner"] == str(tiny_refiner) and fields["Refiner switch at"] == "0.5"
    assert fields["Denoising strength"] == "0.6" and fields["Init image hash"] == image_hash(init)[:10]


def test_static_float8_calibrates_the_refiner_too(tiny_models, tiny_refiner):
    """The refiner's UNet takes five time ids (aesthetic score) and one text encoder: its calibration knows."""
    from sdplay.accel import fp8
    from sdplay.engine import Engine

    engine = Engine(fast=True, fast_options="compile=none,graphs=false,fp8=static")
    result = engine.generate(req(tiny_models["sdxl"], refiner=str(tiny_refiner), refiner_switch_at=0.6))
    assert result.images
    refiner, _ = engine.load(str(tiny_refiner))
    assert fp8.layers(refiner.pipe.unet) > 0
