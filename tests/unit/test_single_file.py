"""Single-file checkpoints in the original layout, their configs, and the pickle policy, on tiny models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from singlefile import copy_configs, original_state_dict, widen_second_text_encoder, write_single_file

from sdplay import catalog
from sdplay.catalog import Family
from sdplay.checkpoints import detect_family, load_pickle_state_dict, tensor_names
from sdplay.engine import Engine
from sdplay.errors import ModelNotAvailable, UnsafeCheckpoint
from sdplay.types import GenerationRequest

FAMILIES = ("sd1", "sd2", "sdxl")
PARTS = {"sd1": ("unet", "vae", "text_encoder"), "sd2": ("unet", "vae", "text_encoder"),
         "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tiny_models, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per family: the tiny diffusers folder, and its weights as one original-layout file with configs beside it."""
    root = tmp_path_factory.mktemp("single-file")
    out = {}
    for family, folder in tiny_models.items():
        if family == "sdxl":  # diffusers tells SDXL's two encoders apart by width, as in the real model
            folder = widen_second_text_encoder(shutil.copytree(folder, root / "sdxl-folder"))
        path = write_single_file(folder, family, root / f"{family}.safetensors")
        copy_configs(folder, root / family)  # sdxl.safetensors + sdxl/model_index.json ...
        out[family] = (folder, path)
    return out


def _request(model: Path) -> GenerationRequest:
    # sampler and guidance are explicit: a tiny SD1 folder takes the defaults of the embedded model, not of SD 1.4
    return GenerationRequest(
        prompt="a red heart", model=str(model), width=64, height=64, steps=2, seed=1, sampler="Euler", guidance=7.5
    )


def _pixels(engine: Engine, model: Path) -> np.ndarray:
    return np.asarray(engine.generate(_request(model)).images[0])


@pytest.fixture(scope="module")
def folder_pixels(engine, checkpoints) -> dict[str, np.ndarray]:
    return {family: _pixels(engine, folder) for family, (folder, _) in checkpoints.items()}


def test_file_is_in_the_original_layout(checkpoints):
    from safetensors import safe_open

    shapes = {}
    for _, path in checkpoints.values():
        with safe_open(str(path), framework="pt") as f:
            shapes |= {f"{path.stem}:{k}": tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")
    assert all(k.split(":", 1)[1].startswith(prefixes) for k in shapes)
    assert shapes["sd1:model.diffusion_model.input_blocks.0.0.weight"] == (32, 4, 3, 3)
    assert "sd1:model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in shapes
    assert "sd1:model.diffusion_model.input_blocks.2.0.op.weight" in shapes  # down block 0's downsampler
    assert "sd1:model.diffusion_model.output_blocks.1.2.conv.weight" in shapes  # up block 0: upsampler after attention
    assert not any(".output_blocks.2.1." in k for k in shapes)  # the last up block has no attention
    assert shapes["sd1:first_stage_model.decoder.mid.attn_1.q.weight"] == (8, 8, 1, 1)
    assert "sd1:cond_stage_model.transformer.text_model.final_layer_norm.weight" in shapes
    assert shapes["sd2:cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"] == (96, 32)
    assert shapes["sdxl:conditioner.embedders.1.model.text_projection"] == (48, 32)  # (width, projection)
    assert shapes["sdxl:model.diffusion_model.label_emb.0.0.weight"][0] == 128
    assert "sdxl:conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_converter_round_trips_through_diffusers_exactly(checkpoints, family):
    import diffusers

    folder, path = checkpoints[family]
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    configs = str(path.with_suffix(""))  # weightless: every tensor must come from the file
    single = cls.from_single_file(str(path), config=configs, dtype=torch.float32, local_files_only=True)
    ref = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    for part in PARTS[family]:
        want, got = getattr(ref, part).state_dict(), getattr(single, part).state_dict()
        assert got.keys() == want.keys(), part
        different = [k for k in want if got[k].is_meta or not torch.equal(got[k], want[k])]
        assert not different, f"{part}: {different[:5]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_and_configs_beside_the_file_are_used(checkpoints, family):
    _, path = checkpoints[family]
    assert detect_family(path) == Family(family)
    spec = catalog.resolve(str(path))
    assert (spec.family, spec.weights_dir, spec.config_dir) == (Family(family), path, path.with_suffix(""))
    assert spec.pipeline_class == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_gives_the_folders_pixels(engine, checkpoints, folder_pixels, family):
    _, path = checkpoints[family]
    result = engine.generate(_request(path))
    assert result.metadata["optimisation"]["source"] == f"single file {path}"
    assert result.metadata["family"] == family
    np.testing.assert_array_equal(np.asarray(result.images[0]), folder_pixels[family])


def test_without_configs_beside_it_the_builtin_full_size_ones_are_used(engine, checkpoints, tmp_path):
    lone = tmp_path / "lone.safetensors"
    shutil.copyfile(checkpoints["sd1"][1], lone)
    assert catalog.resolve(str(lone)).config_dir == catalog.builtin("sd-v1-4").config_dir
    with pytest.raises(ModelNotAvailable, match=r"lone/model_index\.json") as info:
        engine.generate(_request(lone))
    assert info.value.field == "model"


def _save_pickle(checkpoints, tmp_path: Path, name: str, **extra) -> Path:
    """The sd1 weights as a torch.save pickle, with a training step and the configs beside it."""
    folder = checkpoints["sd1"][0]
    state = original_state_dict(folder, "sd1") | extra
    ckpt = tmp_path / f"{name}.ckpt"
    torch.save({"state_dict": state, "global_step": 470000}, ckpt)
    copy_configs(folder, tmp_path / name)
    return ckpt


def test_pickle_is_refused_unless_allowed_then_gives_the_same_pixels(engine, checkpoints, folder_pixels, tmp_path):
    ckpt = _save_pickle(checkpoints, tmp_path, "sd1-pickle")
    with pytest.raises(UnsafeCheckpoint, match="--allow-pickle") as info:
        engine.generate(_request(ckpt))
    assert info.value.field == "model" and "weights_only=True" in str(info.value)
    trusting = Engine(allow_pickle=True, max_models=1)
    result = trusting.generate(_request(ckpt))
    np.testing.assert_array_equal(np.asarray(result.images[0]), folder_pixels["sd1"])
    assert result.metadata["optimisation"]["source"] == f"single file {ckpt}"
    cache = Path(os.environ["SDPLAY_CACHE"]) / "converted"
    assert [p.suffix for p in cache.glob("sd1-pickle-*")] == [".safetensors"]  # converted once, kept


class _Payload:
    """Unpickling this writes a file: what a hostile checkpoint would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_pickle_that_would_run_code_is_refused_even_when_allowed(engine, checkpoints, tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = _save_pickle(checkpoints, tmp_path, "hostile", payload=_Payload(marker))
    with pytest.raises(UnsafeCheckpoint, match="--allow-pickle"):  # not even opened without permission
        engine.generate(_request(ckpt))
    with pytest.raises(UnsafeCheckpoint, match="more than plain tensors"):
        Engine(allow_pickle=True, max_models=1).generate(_request(ckpt))
    with pytest.raises(UnsafeCheckpoint):
        load_pickle_state_dict(ckpt, allow_pickle=True)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the payload is real: a plain unpickler runs it
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_is_not_available(engine, checkpoints, tmp_path, damage):
    bad = tmp_path / "bad.safetensors"
    data = checkpoints["sd1"][1].read_bytes()
    bad.write_bytes(b"\x00not a checkpoint" * 64 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ModelNotAvailable, match=r"not a readable \.safetensors checkpoint") as info:
        engine.generate(_request(bad))
    assert info.value.field == "model" and "download" in (info.value.hint or "")


def test_safetensors_of_another_kind_of_model_is_not_available(engine, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "classifier.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4), "classifier.bias": torch.zeros(4)}, str(other))
    assert tensor_names(other) == ["classifier.bias", "encoder.layer.0.weight"]
    with pytest.raises(ModelNotAvailable, match="does not look like a Stable Diffusion") as info:
        engine.generate(_request(other))
    assert "model.diffusion_model" in (info.value.hint or "")
