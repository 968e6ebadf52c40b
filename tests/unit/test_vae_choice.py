"""VAE choice on tiny models: a VAE file or diffusers folder in place of the model's own, swapped per batch."""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import make_vae_file, make_vae_folder

from sdplay.engine import Engine
from sdplay.errors import InvalidRequest, ModelNotAvailable, UnsafeCheckpoint
from sdplay.images import parameters_for
from sdplay.plan import Limits, check_compatible
from sdplay.types import GenerationRequest


@pytest.fixture(scope="module")
def vae_dir(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    make_vae_file(tiny_models["sd1"], root / "crisp-sd1.safetensors")
    make_vae_folder(tiny_models["sd1"], root / "folder-sd1")
    make_vae_file(tiny_models["sdxl"], root / "crisp-sdxl.safetensors", seed=8)
    return root


@pytest.fixture(scope="module")
def vengine(vae_dir):
    return Engine(max_models=3, vae_dir=str(vae_dir))


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "width": 64, "height": 64, "steps": 3, "seed": 7}
    return GenerationRequest(**(base | kw))


def pixels(result):
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_vae_file_changes_the_image_and_is_put_back(vengine, tiny_models, vae_dir, family):
    model, name = tiny_models[family], f"crisp-{family}.safetensors"
    before = vengine.generate(req(model))
    pipe = vengine.load(str(model))[0].pipe
    own = pipe.vae
    chosen = vengine.generate(req(model, vae=name))
    stem = vengine.generate(req(model, vae=name.removesuffix(".safetensors")))
    after = vengine.generate(req(model, vae="Automatic"))
    none = vengine.generate(req(model, vae="None"))
    assert np.abs(pixels(chosen) - pixels(before)).mean() > 1.0
    assert np.array_equal(pixels(stem), pixels(chosen))
    assert np.array_equal(pixels(after), pixels(before)) and np.array_equal(pixels(none), pixels(before))
    assert pipe.vae is own and vengine.load(str(model))[0].pipe is pipe, "the model is never reloaded"
    assert chosen.timings.load == 0.0
    digest = hashlib.sha256((vae_dir / name).read_bytes()).hexdigest()[:10]
    assert chosen.metadata["vae"] == name and chosen.metadata["vae_hash"] == digest
    text = parameters_for(chosen, 0)
    assert f"VAE hash: {digest}" in text and f"VAE: {name}" in text
    assert "VAE" not in parameters_for(before, 0)


def test_img2img_encodes_with_the_chosen_vae_and_task_pipelines_keep_their_own(vengine, tiny_models):
    from PIL import Image

    model = tiny_models["sd1"]
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    plain = vengine.generate(req(model, init_image=init, strength=0.5))
    chosen = vengine.generate(req(model, init_image=init, strength=0.5, vae="crisp-sd1"))
    again = vengine.generate(req(model, init_image=init, strength=0.5))
    assert not np.array_equal(pixels(chosen), pixels(plain))
    assert np.array_equal(pixels(again), pixels(plain))
    pipe = vengine.load(str(model))[0].pipe
    assert all(p.vae is pipe.vae for p in pipe.__dict__.get("sdplay_tasks", {}).values())


def test_a_diffusers_vae_folder_and_a_default_vae(tiny_models, vae_dir):
    model = tiny_models["sd1"]
    eng = Engine(vae_dir=str(vae_dir), vae=str(vae_dir / "folder-sd1"))
    default = eng.generate(req(model))
    assert default.metadata["vae"] == "folder-sd1"
    named = eng.generate(req(model, vae="folder-sd1"))
    own = eng.generate(req(model, vae="None"))
    assert np.array_equal(pixels(default), pixels(named)) and not np.array_equal(pixels(own), pixels(default))
    assert own.metadata["vae"] is None


def test_pickled_vae_refused_then_allowed(tiny_models, vae_dir, tmp_path):
    model = tiny_models["sd1"]
    torch.save({"state_dict": load_file(str(vae_dir / "crisp-sd1.safetensors"))}, str(tmp_path / "old.pt"))
    with pytest.raises(UnsafeCheckpoint, match="pickle"):
        Engine(vae_dir=str(tmp_path)).generate(req(model, vae="old.pt"))
    allowed = Engine(vae_dir=str(tmp_path), allow_pickle=True).generate(req(model, vae="old.pt"))
    reference = Engine(vae_dir=str(vae_dir)).generate(req(model, vae="crisp-sd1.safetensors"))
    assert np.array_equal(pixels(allowed), pixels(reference))


def test_plans_with_other_vaes_never_share_a_batch(vengine, tiny_models):
    model = tiny_models["sd1"]
    plain, chosen = vengine.plan(req(model)), vengine.plan(req(model, vae="crisp-sd1"))
    assert plain.batch_key != chosen.batch_key
    assert vengine.plan(req(model, vae="None")).batch_key == plain.batch_key
    with pytest.raises(InvalidRequest, match="vae"):
        check_compatible([plain, chosen])


def test_bad_vae_names_and_files_get_clear_errors(vengine, tiny_models, vae_dir, tmp_path):
    model = tiny_models["sd1"]
    with pytest.raises(InvalidRequest, match=r"Close ones: .*crisp-sd1\.safetensors"):
        vengine.plan(req(model, vae="crisp-sd"))
    server = Limits(catalog_only=True)
    for bad in ("../crisp-sd1.safetensors", str(vae_dir / "crisp-sd1.safetensors")):
        with pytest.raises(InvalidRequest, match="names are file names"):
            vengine.plan(GenerationRequest(prompt="x", vae=bad), server)  # a server's plan: catalog models only
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        vengine.plan(req(model, vae=str(tmp_path / "missing.safetensors")))
    data = (vae_dir / "crisp-sd1.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    state = load_file(str(vae_dir / "crisp-sd1.safetensors"))
    save_file({k: v.clone().fill_(float("nan")) if "conv_in" in k else v for k, v in state.items()},
              str(tmp_path / "nan.safetensors"))  # fmt: skip
    save_file({k: v for k, v in state.items() if "decoder" not in k}, str(tmp_path / "half.safetensors"))
    eng = Engine(vae_dir=str(tmp_path))
    with pytest.raises(ModelNotAvailable, match="cannot be read"):
        eng.generate(req(model, vae="cut.safetensors"))
    with pytest.raises(ModelNotAvailable, match="NaN"):
        eng.generate(req(model, vae="nan.safetensors"))
    with pytest.raises(InvalidRequest, match=r"lacks weights|does not fit"):
        eng.generate(req(model, vae="half.safetensors"))
    from diffusers import AutoencoderKL

    config = dict(AutoencoderKL.load_config(model / "vae"), latent_channels=16)  # an SD3/Flux-like latent space
    AutoencoderKL.from_config(config).save_pretrained(tmp_path / "sixteen")
    with pytest.raises(InvalidRequest, match="16 latent channels"):
        eng.generate(req(model, vae=str(tmp_path / "sixteen")))
    assert np.array_equal(pixels(eng.generate(req(model))), pixels(vengine.generate(req(model))))
