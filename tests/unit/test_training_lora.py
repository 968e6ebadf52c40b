"""`sdplay train --lora` on the embedded model: the kohya file it writes, its learned effect, resume, errors."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from zorbo import CAPTION, blue_share, distance, make_folder

from sdplay.engine import Engine
from sdplay.training import checkpoint
from sdplay.training.loop import TrainConfig, train
from sdplay.types import GenerationRequest

# the attention projections of sdplay-emoji: 7 transformer blocks x 2 attentions x 4, and 4 CLIP layers x 4
UNET_MODULES, TEXT_MODULES = 7 * 2 * 4, 4 * 4


def test_the_file_has_kohya_keys_and_ss_metadata(zorbo_lora):
    file, _ = zorbo_lora
    tensors = load_file(str(file))
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert len([m for m in modules if m.startswith("lora_unet_")]) == UNET_MODULES
    assert len([m for m in modules if m.startswith("lora_te_text_model_encoder_layers_")]) == TEXT_MODULES
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in modules
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0" in modules
    for m in modules:
        down, up = tensors[f"{m}.lora_down.weight"], tensors[f"{m}.lora_up.weight"]
        assert down.shape[0] == up.shape[1] == 4 and float(tensors[f"{m}.alpha"]) == 4.0
        assert down.dtype == up.dtype == torch.float32
    assert len(tensors) == 3 * len(modules)
    assert any(float(t.abs().max()) > 1e-3 for k, t in tensors.items() if k.endswith("lora_up.weight")), "trained"
    with safe_open(str(file), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_base_model_version"]) == ("4", "4", "sd_v1")
    assert (meta["ss_output_name"], meta["ss_sd_model_name"]) == ("zorbo", "sdplay-emoji")
    assert meta["ss_resolution"] == "(64, 64)"
    assert meta["ss_num_train_images"] == "6" and meta["ss_steps"] == "200" and meta["ss_v2"] == "False"
    assert '"zorbo": 6' in meta["ss_tag_frequency"]


def test_the_file_round_trips_through_sdplay_loras(zorbo_lora, tmp_path):
    import shutil

    from sdplay.loras import Folder, ResolvedLora, ensure_loaded
    from sdplay.prompt_syntax import LoraRef

    file, _ = zorbo_lora
    found = Folder(file.parent, "LoRA").get("zorbo", "loras")
    assert found.metadata["ss_network_dim"] == "4" and found.alias == "zorbo"
    shutil.copy(file, tmp_path / "renamed.safetensors")
    renamed = Folder(tmp_path, "LoRA")
    assert renamed.get("zorbo", "loras").name == "renamed", "found by its alias (ss_output_name), as in A1111"
    assert renamed.get("renamed", "loras").alias == "zorbo"
    assert found.metadata["ss_tag_frequency"] == {"images": {"zorbo": 6}}  # JSON values decoded, as A1111 does
    model = Engine(device="cpu").load("sdplay-emoji")[0]
    lora = ResolvedLora(found, LoraRef("zorbo"))
    ensure_loaded(model.pipe, [lora], model.family_spec)
    tensors = load_file(str(file))
    checked = 0
    for prefix, net in (("lora_unet_", model.pipe.unet), ("lora_te_text_model_", model.pipe.text_encoder)):
        for path, layer in net.named_modules():
            if hasattr(layer, "lora_A") and lora.adapter in layer.lora_A:
                name = prefix + path.replace(".", "_")
                assert torch.equal(layer.lora_A[lora.adapter].weight, tensors[f"{name}.lora_down.weight"])
                assert torch.equal(layer.lora_B[lora.adapter].weight, tensors[f"{name}.lora_up.weight"])
                assert layer.scaling[lora.adapter] == 1.0  # alpha 4 / rank 4
                checked += 1
    assert checked == UNET_MODULES + TEXT_MODULES, "every module of the file was loaded"


def test_the_lora_draws_what_it_learned_and_weight_0_or_the_next_request_do_not(zorbo_lora):
    file, images = zorbo_lora
    engine = Engine(device="cpu", lora_dir=str(file.parent))

    def draw(prompt):
        return engine.generate(GenerationRequest(prompt=prompt, seed=0, n_images=4, steps=10)).images

    plain = draw(CAPTION)
    learned = draw(f"{CAPTION} <lora:zorbo:1>")
    zero = draw(f"{CAPTION} <lora:zorbo:0>")
    after = draw(CAPTION)
    # measured (200 steps, batch 4, lr 5e-3): distance 0.222 -> 0.079, blue share 0% -> 12% (training images 22%)
    near, far = distance(learned, images), distance(plain, images)
    assert near < 0.5 * far, (near, far)
    assert blue_share(learned) > blue_share(plain) + 0.05, (blue_share(learned), blue_share(plain))
    for a, b in zip(plain, zero, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "<lora:zorbo:0> is the plain image"
    for a, b in zip(plain, after, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "the LoRA must not leak into the next request"


def _cfg(out, images, **kw) -> TrainConfig:
    base = dict(lora=True, init="sdplay-emoji", images=images, steps=6, batch_size=2, lr=5e-3, warmup=2)
    return TrainConfig(out=out, device="cpu", progress=False, checkpoint_every=1000, caption_dropout=0.0, **base | kw)


def test_ctrl_c_keeps_a_small_checkpoint_and_resume_ends_as_an_unbroken_run(tmp_path):
    images = make_folder(tmp_path / "images")
    whole = train(_cfg(tmp_path / "whole", images, lora_name="z"))
    assert whole.lora_file == tmp_path / "whole" / "z.safetensors" and whole.steps == 6

    def press_ctrl_c(stage, step, total, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, images, lora_name="z"), on_step=press_ctrl_c)
    state = checkpoint.load_checkpoint(out / checkpoint.CHECKPOINT_NAME)
    assert (state["stage"], state["step"]) == ("unet", 3) and "unet" not in state, "adapters only, not the model"
    assert (out / checkpoint.CHECKPOINT_NAME).stat().st_size < 2_000_000
    assert not (out / "z.safetensors").exists()
    resumed = train(_cfg(out, images, lora_name="z"), resume=True)
    a, b = load_file(str(whole.lora_file)), load_file(str(resumed.lora_file))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    unet_only = load_file(str(train(_cfg(tmp_path / "u", images, train_text_encoder=False)).lora_file))
    assert unet_only and all(k.startswith("lora_unet_") for k in unet_only)


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        ("empty", [], "holds no images"),
        ("no-caption", [], "has no caption file zorbo0.txt"),
        ("ok", ["--init", "sdxl-base-1.0"], "SDXL model; `sdplay train --lora` trains LoRAs for SD 1.x/2.x"),
        ("none", [], "needs your images"),
        ("ok", ["--vae-steps", "5"], "--vae-steps cannot be used with --lora"),
        ("ok", ["--rank", "0"], "--rank must be at least 1"),
    ],
)
def test_bad_input_is_one_line_that_says_what_to_do(tmp_path, capsys, setup, flags, message):
    from sdplay.cli.main import main

    images = tmp_path / "images"
    images.mkdir()
    if setup in ("ok", "no-caption"):
        make_folder(images)
    if setup == "no-caption":
        (images / "zorbo0.txt").unlink()
    where = [] if setup == "none" else ["--images", str(images)]
    code = main(["train", "--lora", *where, "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "run.safetensors").exists()


def test_sdplay_generate_runs_the_printed_command(zorbo_lora, tmp_path, capsys):
    from sdplay.cli.main import main
    from sdplay.images import read_png_info

    file, _ = zorbo_lora
    args = ["generate", "--model", "sdplay-emoji", "--lora-dir", str(file.parent), f"{CAPTION} <lora:zorbo:1>"]
    assert main([*args, "--steps", "2", "--seed", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vocabulary" not in out, "no 'unknown words' note when a LoRA is applied"
    [png] = tmp_path.glob("*.png")
    assert 'Lora hashes: "zorbo: ' in read_png_info(png)["parameters"]
