"""The train loop on toy-sized models and data made here: export, determinism, Ctrl-C and resume, fine-tuning."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdplay.catalog import ASSETS
from sdplay.errors import DataError, InvalidRequest, ModelNotAvailable
from sdplay.training import checkpoint, export
from sdplay.training.data import CaptionedImages, save_set
from sdplay.training.loop import TrainConfig, train
from sdplay.training.models import TINY

COLOURS = {"red square": (220, 30, 30), "blue square": (30, 30, 220), "green circle": (30, 200, 30)}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    """Three flat-coloured 16x16 images with captions, as a cached .npz set."""
    images = np.stack([np.full((16, 16, 3), rgb, np.uint8) for rgb in COLOURS.values()])
    names = list(COLOURS)
    variants = [[n, f"{n}, shapes"] for n in names]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    return save_set(CaptionedImages(images, names, variants, "test", ["shapes"] * 3), path)


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(arch=TINY, steps=6, vae_steps=4, batch_size=4, vae_batch_size=4, warmup=2, checkpoint_every=1000)
    return TrainConfig(out=out, data=data, device="cpu", progress=False, **{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_set) -> Path:
    """A toy model trained once for the tests that need one."""
    return train(_cfg(tmp_path_factory.mktemp("run"), tiny_set)).model_dir


def test_export_is_a_complete_offline_diffusers_folder(trained):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    index = json.loads((trained / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for name in ("vocab.json", "merges.txt"):
        assert (trained / "tokenizer" / name).read_bytes() == (ASSETS / "clip_tokenizer" / name).read_bytes()
    with safe_open(trained / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 == {torch.float16}
    assert "Apache" in (trained / "README.md").read_text()
    pipe = StableDiffusionPipeline.from_pretrained(trained, dtype=torch.float32, local_files_only=True)
    assert pipe.tokenizer("red square").input_ids[:2] == [49406, 736]  # the real CLIP vocabulary
    image = pipe("red square", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16)


def test_same_seed_same_weights(tmp_path, tiny_set, trained):
    again = train(_cfg(tmp_path / "again", tiny_set)).model_dir
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (again / part).read_bytes() == (trained / part).read_bytes()
    other = train(_cfg(tmp_path / "other", tiny_set, seed=1)).model_dir
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (other / name).read_bytes() != (trained / name).read_bytes()


@pytest.mark.parametrize("stage", ["vae", "unet"])
def test_ctrl_c_keeps_a_checkpoint_and_resume_matches_an_unbroken_run(tmp_path, tiny_set, trained, stage):
    out = tmp_path / "stopped"

    def press_ctrl_c(name, step, total, loss):
        if name == stage and step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, tiny_set), on_step=press_ctrl_c)
    state = checkpoint.load_checkpoint(out / checkpoint.CHECKPOINT_NAME)
    assert (state["stage"], state["step"]) == (stage, 2)
    assert not (out / "model").exists()
    resumed = train(_cfg(out, tiny_set), resume=True).model_dir
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (resumed / part).read_bytes() == (trained / part).read_bytes()


NAMING = {"text_steps": 40, "text_weight": 0.5, "text_batch_size": 8, "text_lr": 1e-2}


def test_naming_stage_learns_the_captions_before_the_unet(tmp_path, tiny_set, trained):
    seen: dict[str, list[float]] = {}

    def record(name, step, total, loss):
        seen.setdefault(name, []).append(loss)

    result = train(_cfg(tmp_path / "named", tiny_set, **NAMING), on_step=record)
    assert list(seen) == ["vae", "text", "unet"] and len(seen["text"]) == 40
    assert np.mean(seen["text"][:3]) > 0.8  # about log(3): three emoji, not yet told apart
    assert np.mean(seen["text"][-5:]) < 0.2  # then named from their captions
    state = checkpoint.load_checkpoint(tmp_path / "named" / checkpoint.CHECKPOINT_NAME)
    assert state["head"]["weight"].shape == (3, TINY.text_hidden)
    part = "text_encoder/model.safetensors"
    assert (result.model_dir / part).read_bytes() != (trained / part).read_bytes()  # the same run without naming
    export.check_folder(result.model_dir)  # the head is not part of the model


@pytest.mark.parametrize("stage", ["text", "unet"])
def test_resume_in_or_after_the_naming_stage_matches_an_unbroken_run(tmp_path, tiny_set, stage):
    unbroken = train(_cfg(tmp_path / "unbroken", tiny_set, **NAMING)).model_dir
    out = tmp_path / "stopped"

    def press_ctrl_c(name, step, total, loss):
        if name == stage and step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, tiny_set, **NAMING), on_step=press_ctrl_c)
    assert checkpoint.load_checkpoint(out / checkpoint.CHECKPOINT_NAME)["stage"] == stage
    resumed = train(_cfg(out, tiny_set, **NAMING), resume=True).model_dir
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (resumed / part).read_bytes() == (unbroken / part).read_bytes()


def test_a_write_stopped_half_way_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint({"stage": "unet", "step": 7, "w": torch.ones(3)}, path)

    def torn_write(obj, fh):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"stage": "unet", "step": 8}, path)
    assert checkpoint.load_checkpoint(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_bad_checkpoints_are_named(tmp_path, tiny_set):
    with pytest.raises(DataError, match=r"No checkpoint to resume from at .*checkpoint.pt"):
        train(_cfg(tmp_path, tiny_set), resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"checkpoint.pt is not a readable sdplay checkpoint"):
        train(_cfg(tmp_path, tiny_set), resume=True)


def test_fine_tune_on_a_folder_of_captioned_images(tmp_path, trained):
    images = tmp_path / "mine"
    images.mkdir()
    for i, rgb in enumerate([(250, 200, 0), (120, 0, 160)]):
        Image.new("RGB", (40, 32), rgb).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(["yellow square", "purple square"][i])
    cfg = _cfg(tmp_path / "ft", None, init=str(trained), images=images, steps=3, lr=1e-3)
    result = train(cfg)
    folder = result.model_dir
    export.check_folder(folder)
    vae = "vae/diffusion_pytorch_model.safetensors"
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (folder / vae).read_bytes() == (trained / vae).read_bytes()  # the VAE stays frozen
    assert (folder / unet).read_bytes() != (trained / unet).read_bytes()
    assert "## Fine-tuned" in (folder / "README.md").read_text()
    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    request = GenerationRequest("yellow square", model=str(folder), steps=2, width=16, height=16, seed=1, device="cpu")
    assert Engine().generate(request).images[0].size == (16, 16)  # sdplay loads the new folder by path


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("model_index.json", "model_index.json"),
        ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"),
        ("text_encoder/config.json", "text_encoder/config.json"),
        ("tokenizer/vocab.json", "tokenizer/vocab.json"),
    ],
)
def test_incomplete_model_folder_names_the_missing_file(tmp_path, tiny_set, trained, remove, named):
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / remove).unlink()
    with pytest.raises(ModelNotAvailable, match=re.escape(f"{broken}/{named} is missing")):
        export.check_folder(broken)
    with pytest.raises(ModelNotAvailable, match=named):
        train(_cfg(tmp_path / "ft", tiny_set, init=str(broken)))


def test_cli_trains_and_reports(tmp_path, tiny_set, capsys):
    from sdplay.cli.main import main

    out = tmp_path / "cli"
    args = ["train", "--tiny", "--data", str(tiny_set), "--out", str(out), "--steps", "2", "--vae-steps", "2"]
    assert main([*args, "--batch-size", "2", "--device", "cpu", "--no-progress"]) == 0
    assert "sdplay generate --model" in capsys.readouterr().out
    export.check_folder(out / "model")
    assert main(["train", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "x")]) == 2
    assert "No training data at" in capsys.readouterr().err


def test_a_two_encoder_folder_is_refused_by_its_family(tmp_path):
    folder = tmp_path / "xl"
    shutil.copytree(ASSETS / "configs" / "sdxl-base-1.0", folder)
    with pytest.raises(ModelNotAvailable, match="is an SDXL folder; training supports SD1/SD2-style folders"):
        export.check_folder(folder)


def _token_embedding(folder: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(folder / "text_encoder" / "model.safetensors")
    return next(v for k, v in tensors.items() if k.endswith("token_embedding.weight")).float()


def test_tokens_no_caption_uses_read_as_the_distractor_words(tmp_path, tiny_set, trained):
    from sdplay.training import apply_unseen, unseen

    cfg = _cfg(tmp_path, tiny_set)
    tokens, distractors = apply_unseen.training_tokens(cfg, export.load_tokenizer())
    seen = unseen.seen_mask(tokens, 49408)
    drawn = distractors[seen[distractors]]  # the extra words some phrasing of this small set drew
    assert len(distractors) > 1000 and 20 < len(drawn) < len(distractors)
    assert int(seen.sum()) < 2000  # captions and phrasings use a small part of CLIP's vocabulary
    weight = _token_embedding(trained)
    neutral = weight[drawn].mean(0)
    assert torch.allclose(weight[~seen], neutral.expand_as(weight[~seen]), atol=2e-3)  # fp16 on disk
    red = export.load_tokenizer()("red", add_special_tokens=False).input_ids[0]
    assert seen[red] and (weight[red] - neutral).abs().max() > 0.05  # a caption word keeps its own vector
    kept = train(_cfg(tmp_path / "kept", tiny_set, unseen_tokens="keep")).model_dir
    random_start = _token_embedding(kept)[~seen]
    assert (random_start - random_start.mean(0)).abs().max() > 0.05  # without the rule: the random start
    assert "sdplay.training.unseen" in (trained / "README.md").read_text()  # the model card says so
    assert "sdplay.training.unseen" not in (kept / "README.md").read_text()


def test_apply_unseen_to_an_older_folder_gives_what_the_export_writes(tmp_path, tiny_set, trained, capsys):
    from sdplay.training import apply_unseen

    kept = train(_cfg(tmp_path / "kept", tiny_set, unseen_tokens="keep")).model_dir
    cfg = _cfg(tmp_path, tiny_set)
    assert apply_unseen.apply_to_folder(kept, cfg) > 30000
    assert torch.allclose(_token_embedding(kept), _token_embedding(trained), atol=1e-3)
    once = (kept / "text_encoder" / "model.safetensors").read_bytes()
    apply_unseen.apply_to_folder(kept, cfg)
    assert (kept / "text_encoder" / "model.safetensors").read_bytes() == once  # twice changes nothing more
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (kept / part).read_bytes() == (trained / part).read_bytes()
    (kept / "text_encoder" / "model.safetensors").unlink()
    (kept / "text_encoder" / "pytorch_model.bin").write_bytes(b"")
    assert apply_unseen.main(["--model", str(kept), "--data", str(tiny_set)]) == 2
    assert "holds no token embedding" in capsys.readouterr().err


def test_the_rule_is_only_for_new_models_that_learn_their_embedding(tmp_path):
    from sdplay.training.loop import _neutral_unseen

    assert _neutral_unseen(TrainConfig(), new_model=True)
    assert not _neutral_unseen(TrainConfig(), new_model=False)  # fine-tuning SD's own CLIP: untouched
    assert not _neutral_unseen(TrainConfig(augment=0), new_model=True)  # no distractors trained on
    assert not _neutral_unseen(TrainConfig(unseen_tokens="keep"), new_model=True)
    assert not _neutral_unseen(TrainConfig(token_embedding=tmp_path / "v.npy"), new_model=True)
    assert not _neutral_unseen(TrainConfig(train_text_encoder=False), new_model=True)
    with pytest.raises(InvalidRequest, match="unseen_tokens='Neutral' is not a choice"):
        _neutral_unseen(TrainConfig(unseen_tokens="Neutral"), new_model=True)


def test_only_trained_rows_make_the_neutral_vector():
    from sdplay.training import unseen

    weight = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    seen = torch.tensor([True, True, True, False, False, True])
    assert unseen.neutralise(weight, seen, torch.tensor([1, 2, 4])) == 2  # row 4 was never trained: not counted
    assert weight[3].tolist() == weight[4].tolist() == [3.0, 4.0] and weight[5].tolist() == [10.0, 11.0]
    before = weight.clone()
    assert unseen.neutralise(weight, seen, torch.tensor([3])) == 0 and torch.equal(weight, before)
