"""sdplay's own loader: .safetensors read once, modules built empty, the same tensors diffusers' loaders give."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from singlefile import widen_second_text_encoder, write_single_file

from sdplay import catalog, fastload, tensorfiles
from sdplay.devices import discover_devices
from sdplay.engine import Engine
from sdplay.errors import ModelNotAvailable
from sdplay.loading import LoadOptions, load_pipeline
from sdplay.types import GenerationRequest

FAMILIES = ("sd1", "sd2", "sdxl")
CPU = next(d for d in discover_devices() if d.kind == "cpu")


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def assert_same_modules(got, want) -> None:
    """Every parameter and buffer equal in value, dtype and name."""
    assert _modules(got).keys() == _modules(want).keys()
    for name, module in _modules(want).items():
        mine = _modules(got)[name]
        for kind in ("named_parameters", "named_buffers"):
            a, b = dict(getattr(mine, kind)()), dict(getattr(module, kind)())
            assert a.keys() == b.keys(), f"{name} {kind}"
            bad = [k for k in b if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
            assert not bad, f"{name}: {bad[:4]}"


def _request(model: Path) -> GenerationRequest:
    return GenerationRequest(prompt="a red heart", model=str(model), width=64, height=64, steps=2, seed=3,
                             sampler="Euler", guidance=7.5)  # fmt: skip


def _load(path: Path, dtype: str = "float32", **opts):
    return load_pipeline(catalog.resolve(str(path)), CPU, dtype, LoadOptions(fast=False, **opts))


# --- the file reader -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {"w": torch.randn(33, 7), "h": torch.randn(5).half(), "b": torch.randn(2, 3).bfloat16(),
               "i": torch.arange(10), "s": torch.tensor(2.5), "e": torch.zeros(0, 4), "m": torch.tensor([True, False]),
               "big": torch.randn(1000)}  # fmt: skip
    path = tmp_path_factory.mktemp("tensors") / "mixed.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("how", [{}, {"threads": 3}, {"threads": 2, "window": 64}, {"window": 7}])
def test_reader_gives_safetensors_tensors(mixed_file, how):
    path, tensors = mixed_file
    got = tensorfiles.load_file(path, **how)  # window: the staged path CUDA takes, through small windows here
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k


def test_reader_casts_only_floating_tensors_and_reads_several_files(mixed_file, tmp_path):
    path, tensors = mixed_file
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.randn(4)}, str(other))
    first, second = tensorfiles.load_files([path, other], dtype=torch.float16, threads=4)
    assert first["w"].dtype == torch.float16 and torch.equal(first["w"], tensors["w"].half())
    assert first["i"].dtype == torch.int64 and first["m"].dtype == torch.bool
    assert torch.equal(second["x"], load_file(str(other))["x"].half())


def test_memory_map_is_copy_on_write(mixed_file):
    path, tensors = mixed_file
    mapped = tensorfiles.map_file(path)
    assert all(torch.equal(mapped[k], v) for k, v in tensors.items())
    mapped["w"].zero_()
    assert torch.equal(load_file(str(path))["w"], tensors["w"])  # the file is untouched


def test_writer_streams_a_file_safetensors_reads(tmp_path):
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(5, dtype=torch.int32), "c": torch.zeros(0)}
    path = tensorfiles.save_file(tensors, tmp_path / "w.safetensors", {"format": "pt"})
    back = load_file(str(path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()}
    tensorfiles.save_file(meta, tmp_path / "f.safetensors", fill=lambda name, t: tensors[name])
    assert torch.equal(load_file(str(tmp_path / "f.safetensors"))["a"], tensors["a"])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_files_are_refused(mixed_file, tmp_path, damage):
    data = mixed_file[0].read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64 if damage == "garbage" else data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"not a \.safetensors file|truncated"):
        tensorfiles.read_header(bad)


# --- pipelines -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tiny_models):
    """diffusers' own loader on each tiny folder."""
    from diffusers import DiffusionPipeline

    return {f: DiffusionPipeline.from_pretrained(p, dtype=torch.float32, local_files_only=True)
            for f, p in tiny_models.items()}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_loads_the_same_tensors_as_diffusers(tiny_models, reference, family):
    loaded = _load(tiny_models[family])
    assert loaded.choices["loader"] == "sdplay"
    assert_same_modules(loaded.pipe, reference[family])
    assert type(loaded.pipe) is type(reference[family])
    assert dict(loaded.pipe.scheduler.config) == dict(reference[family].scheduler.config)
    assert loaded.pipe.tokenizer("a red heart").input_ids == reference[family].tokenizer("a red heart").input_ids
    assert {"imports", "build unet", "assign unet", "read weights (background)"} <= loaded.load_times.keys()


def test_embedded_model_loads_as_diffusers_loads_it_and_in_bfloat16():
    from diffusers import DiffusionPipeline

    folder = catalog.resolve("sdplay-emoji").weights_dir
    for dtype in ("float32", "bfloat16"):
        want = DiffusionPipeline.from_pretrained(folder, dtype=getattr(torch, dtype), local_files_only=True)
        assert_same_modules(_load(folder, dtype).pipe, want)


@pytest.fixture(scope="module")
def single_files(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-single")
    out = {}
    for family, folder in tiny_models.items():
        if family == "sdxl":
            folder = widen_second_text_encoder(shutil.copytree(folder, root / "sdxl-folder"))
        path = write_single_file(folder, family, root / f"{family}.safetensors")
        shutil.copytree(folder, root / family, ignore=shutil.ignore_patterns("*.safetensors"))
        out[family] = (folder, path)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_the_same_tensors_as_diffusers(single_files, family):
    import diffusers

    folder, path = single_files[family]
    loaded = _load(path)
    assert loaded.choices["loader"] == "sdplay" and "convert keys" in loaded.load_times
    cls = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    want = cls.from_single_file(str(path), config=str(path.with_suffix("")), dtype=torch.float32,
                                local_files_only=True)  # fmt: skip
    assert_same_modules(loaded.pipe, want)
    ref = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    assert_same_modules(loaded.pipe, ref)  # and the folder it was written from


def test_open_clip_split_matches_diffusers_converter(single_files):
    from types import SimpleNamespace

    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    for family, prefix in (("sd2", "cond_stage_model.model."), ("sdxl", "conditioner.embedders.1.model.")):
        checkpoint = load_file(str(single_files[family][1]))
        mine = fastload.open_clip_state(checkpoint, prefix)
        model = SimpleNamespace(config=SimpleNamespace(hidden_size=32))
        want = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
        assert set(want) <= set(mine) and all(torch.equal(mine[k], want[k]) for k in want)
        q = next(k for k in mine if k.endswith("q_proj.weight"))
        assert mine[q]._is_view()  # a view of the fused weight, not a copy


def test_sharded_and_prefixed_weights_load(tiny_models, reference, tmp_path):
    """A UNet in two shards, and a text encoder named as the hub's files name it (`text_model.` inside)."""
    folder = shutil.copytree(tiny_models["sd1"], tmp_path / "sharded")
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(unet))
    keys = sorted(state)
    shards = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2 :]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(unet.parent / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (unet.parent / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    unet.unlink()
    text = folder / "text_encoder" / "model.safetensors"
    save_file({f"text_model.{k.removeprefix('text_model.')}": v for k, v in load_file(str(text)).items()}, str(text))
    loaded = _load(folder)
    assert loaded.choices["loader"] == "sdplay"
    assert_same_modules(loaded.pipe, reference["sd1"])


def test_pickled_folder_weights_are_left_to_diffusers(engine, tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["sd1"], tmp_path / "bin")
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(unet)), unet.with_suffix(".bin"))
    unet.unlink()
    loaded = _load(folder)
    assert loaded.choices["loader"] == "diffusers"
    a, b = (engine.generate(_request(model)) for model in (folder, tiny_models["sd1"]))
    assert a.metadata["optimisation"]["loader"] == "diffusers" and b.metadata["optimisation"]["loader"] == "sdplay"
    np.testing.assert_array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


@pytest.fixture(scope="module")
def checked_folder(tiny_models, tmp_path_factory):
    """The tiny SD1 folder with a (tiny) safety checker and its feature extractor, as SD 1.4 ships."""
    from diffusers.pipelines.stable_diffusion import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    folder = shutil.copytree(tiny_models["sd1"], tmp_path_factory.mktemp("checked") / "sd1")
    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 2}, vision_config=vision, projection_dim=16)  # fmt: skip
    checker = StableDiffusionSafetyChecker(config)
    checker.save_pretrained(folder / "safety_checker", safe_serialization=True)
    CLIPImageProcessor(crop_size=32, size=32).save_pretrained(folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index |= {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": True}  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_safety_checker_is_loaded_when_on_and_not_read_when_off(checked_folder):
    from diffusers import DiffusionPipeline

    want = DiffusionPipeline.from_pretrained(checked_folder, dtype=torch.float32, local_files_only=True)
    on = _load(checked_folder)
    assert on.choices["safety_checker"] == "on" and on.choices["loader"] == "sdplay"
    assert_same_modules(on.pipe, want)
    assert type(on.pipe.feature_extractor).__name__ == type(want.feature_extractor).__name__
    off = _load(checked_folder, safety_checker=False)
    assert off.pipe.safety_checker is None and off.choices["safety_checker"] == "off (turned off by the user)"
    assert "build safety_checker" not in off.load_times


def test_modules_are_built_without_random_init(tiny_models, monkeypatch):
    calls = []
    real = torch.nn.init.kaiming_uniform_
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda t, *a, **k: calls.append(1) or real(t, *a, **k))
    from diffusers import UNet2DConditionModel

    unet = fastload._empty_module(UNet2DConditionModel, tiny_models["sd1"] / "unet")
    assert not calls and all(p.is_meta for p in unet.parameters())
    assert torch.nn.init.kaiming_uniform_ is not fastload._unchanged  # put back
    UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tiny_models["sd1"] / "unet"))
    assert calls  # outside the loader, init runs as usual


def test_wrong_sized_weights_teach(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["sd1"], tmp_path / "mixed")
    shutil.copyfile(tiny_models["sdxl"] / "unet" / "config.json", folder / "unet" / "config.json")
    with pytest.raises(ModelNotAvailable, match="wrong shape") as info:
        Engine(max_models=1).load(str(folder))
    assert info.value.field == "model"
