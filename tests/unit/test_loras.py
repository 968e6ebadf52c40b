"""LoRA files in kohya (real key layout) and diffusers/peft format on tiny SD1/SD2/SDXL models."""

import numpy as np
import pytest
from tiny import make_kohya_lora

from sdplay.engine import Engine
from sdplay.errors import InvalidRequest, ModelNotAvailable
from sdplay.images import parameters_for
from sdplay.plan import check_compatible
from sdplay.prompt_syntax import LoraRef
from sdplay.types import GenerationRequest

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="module")
def lora_dir(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    for family in FAMILIES:
        make_kohya_lora(tiny_models[family], root / f"ink-{family}.safetensors")
    make_kohya_lora(tiny_models["sd1"], root / "styles" / "grain-sd1.safetensors", seed=2)
    return root


@pytest.fixture(scope="module")
def lengine(lora_dir):
    return Engine(max_models=3, lora_dir=str(lora_dir))


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "width": 64, "height": 64, "steps": 3, "seed": 7}
    return GenerationRequest(**(base | kw))


def pixels(result):
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_kohya_lora_changes_the_image_and_leaves_no_trace(lengine, tiny_models, family):
    model = tiny_models[family]
    before = lengine.generate(req(model))
    with_lora = lengine.generate(req(model, prompt=f"a red heart <lora:ink-{family}:0.8>"))
    after = lengine.generate(req(model))
    zero = lengine.generate(req(model, prompt=f"a red heart <lora:ink-{family}:0>"))
    assert np.abs(pixels(with_lora) - pixels(before)).mean() > 1.0
    assert np.array_equal(pixels(after), pixels(before)), "the LoRA must not leak into the next request"
    assert np.array_equal(pixels(zero), pixels(before))
    assert with_lora.metadata["loras"][0]["name"] == f"ink-{family}"
    text = parameters_for(with_lora, 0)
    assert f"<lora:ink-{family}:0.8>" in text.splitlines()[0]  # the prompt as written
    assert f'Lora hashes: "ink-{family}: {with_lora.metadata["loras"][0]["hash"]}"' in text


def test_structured_list_equals_the_tag_and_loras_combine(lengine, tiny_models):
    model = tiny_models["sd1"]
    tag = lengine.generate(req(model, prompt="a red heart <lora:ink-sd1:0.7>"))
    listed = lengine.generate(req(model, loras=(LoraRef("ink-sd1", 0.7),)))
    assert np.array_equal(pixels(tag), pixels(listed))
    both = lengine.generate(req(model, prompt="a red heart <lora:ink-sd1:0.7> <lora:grain-sd1:0.5>"))
    other = lengine.generate(req(model, prompt="a red heart <lora:grain-sd1:0.5>"))
    assert not np.array_equal(pixels(both), pixels(tag)) and not np.array_equal(pixels(both), pixels(other))
    text_only = lengine.generate(req(model, prompt="a red heart <lora:ink-sd1:1:0>"))  # text encoder 1, UNet 0
    assert not np.array_equal(pixels(text_only), pixels(lengine.generate(req(model))))


def test_diffusers_format_file_loads_like_the_kohya_one(lengine, tiny_models, lora_dir):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    model = tiny_models["sd1"]
    kohya = lengine.generate(req(model, prompt="a red heart <lora:ink-sd1:1>"))
    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.load_lora_weights(str(lora_dir / "ink-sd1.safetensors"), adapter_name="x")
    StableDiffusionPipeline.save_lora_weights(
        lora_dir / "peft", get_peft_model_state_dict(pipe.unet, adapter_name="x"),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder, adapter_name="x"),
        weight_name="ink-peft.safetensors",
    )  # fmt: skip
    lengine.lora_folder.refresh()
    peft = lengine.generate(req(model, prompt="a red heart <lora:ink-peft:1>"))
    assert np.abs(pixels(peft) - pixels(kohya)).max() <= 1


def test_plans_with_other_loras_never_share_a_batch(lengine, tiny_models):
    model = tiny_models["sd1"]
    plain = lengine.plan(req(model))
    with_lora = lengine.plan(req(model, prompt="x <lora:ink-sd1:1>"))
    stronger = lengine.plan(req(model, prompt="x <lora:ink-sd1:0.5>"))
    assert len({plain.batch_key, with_lora.batch_key, stronger.batch_key}) == 3
    with pytest.raises(InvalidRequest, match="loras"):
        check_compatible([plain, with_lora])


def test_bad_lora_names_and_files_get_clear_errors(lengine, tiny_models, lora_dir):
    model = tiny_models["sd1"]
    with pytest.raises(InvalidRequest, match="ink-sd1") as err:
        lengine.plan(req(model, prompt="x <lora:ink-sd:1>"))
    assert "Close ones" in str(err.value)
    for bad in ("../ink-sd1", "/etc/passwd", "styles/grain-sd1"):
        with pytest.raises(InvalidRequest, match="names are file names"):
            lengine.plan(req(model, loras=(LoraRef(bad),)))
    with pytest.raises(InvalidRequest, match="for SDXL models"):
        lengine.generate(req(model, prompt="x <lora:ink-sdxl:1>"))
    with pytest.raises(InvalidRequest, match=r"for SD 1\.x/2\.x models"):
        lengine.generate(req(tiny_models["sdxl"], prompt="x <lora:ink-sd1:1>"))
    data = (lora_dir / "ink-sd1.safetensors").read_bytes()
    (lora_dir / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotAvailable, match="cannot be read"):
        lengine.generate(req(model, prompt="x <lora:cut:1>"))
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(lora_dir / "ink-sd1.safetensors"))
    next(v for k, v in tensors.items() if k.endswith("lora_up.weight"))[0, 0] = torch.nan
    save_file(tensors, str(lora_dir / "nan.safetensors"))
    with pytest.raises(ModelNotAvailable, match="NaN"):
        lengine.generate(req(model, prompt="x <lora:nan:1>"))
    with pytest.raises(InvalidRequest, match="loras"):
        lengine.plan(req(model, loras=(LoraRef("ink-sd1", float("nan")),)))
    after = lengine.generate(req(model))  # a failed request harms no other
    assert np.array_equal(pixels(after), pixels(lengine.generate(req(model))))
