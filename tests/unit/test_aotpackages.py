"""Ahead-of-time packages on CPU: one per input signature, kept on disk, loaded by a restart, with a fallback.

The "dynamo" packages (compile=aot) are made for real: PyTorch's precompile of a tiny UNet with Inductor's CPU
backend. AOTInductor ("inductor", compile=aoti) takes minutes per model on a CPU, so those tests make package files
with torch.export alone (`torch.export.save` / `load`): the export of the real tiny UNets, the keys, the cache on
disk and every decision around them are the ones the GPU runs; only the kernel compiler differs.
"""

import numpy as np
import pytest
import torch

from sdplay.accel import aotpackages
from sdplay.accel.aotpackages import PackagedForward, input_key, model_key


def export_compiler(calls):
    def compile_(forward, module, args, kwargs, device, path, options):
        calls.append(path.name)
        program = aotpackages.export(forward, module, args, kwargs, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
        return path

    return compile_


def export_loader(path, module, device):
    return torch.export.load(str(path)).module()


@pytest.fixture(scope="module")
def unet(tiny_models):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_models["sdxl"] / "unet").eval()


def inputs(unet, batch, side):
    from types import SimpleNamespace

    from sdplay.bench.probes import unet_inputs

    return unet_inputs(SimpleNamespace(unet=unet), batch, side, side, host_timestep=False)


def test_one_package_per_shape_compiled_once_and_loaded_by_a_restart(unet, tmp_path):
    calls = []
    packaged = PackagedForward(unet, tmp_path, "cpu", compiler=export_compiler(calls), loader=export_loader)
    args, kwargs = inputs(unet, 2, 64)
    with torch.inference_mode():
        expected = unet(*args, **kwargs)[0]
        first, second = packaged(*args, **kwargs)[0], packaged(*args, **kwargs)[0]
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-5)
    assert (packaged.stats.compiled, packaged.stats.loaded, len(calls)) == (1, 1, 1)
    other_args, other_kwargs = inputs(unet, 2, 48)
    with torch.inference_mode():
        packaged(*other_args, **other_kwargs)
    assert packaged.stats.compiled == 2 and len(list(tmp_path.glob("*.pt2"))) == 2
    restarted = PackagedForward(unet, tmp_path, "cpu", compiler=export_compiler(calls), loader=export_loader)
    with torch.inference_mode():
        again = restarted(*args, **kwargs)[0]
    assert (restarted.stats.compiled, restarted.stats.loaded, len(calls)) == (0, 1, 2)
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-5)


def test_a_failed_compile_runs_the_fallback_and_is_not_retried(unet, tmp_path):
    attempts, fallback_calls = [], []

    def broken(*_args):
        attempts.append(1)
        raise RuntimeError("no C++ compiler\nmore detail")

    def fallback(*args, **kwargs):
        fallback_calls.append(1)
        return unet(*args, **kwargs)

    packaged = PackagedForward(unet, tmp_path, "cpu", fallback=fallback, compiler=broken, loader=export_loader)
    args, kwargs = inputs(unet, 2, 64)
    with torch.inference_mode():
        out = packaged(*args, **kwargs)[0]
        packaged(*args, **kwargs)
        torch.testing.assert_close(out, unet(*args, **kwargs)[0])
    assert len(attempts) == 1 and len(fallback_calls) == 2
    assert packaged.stats.failures == ["RuntimeError: no C++ compiler"] and packaged.stats.fallback_calls == 2
    assert not list(tmp_path.glob("*.pt2"))


def test_model_key_follows_what_changes_the_code_not_the_weight_values(tiny_models):
    from diffusers import UNet2DConditionModel

    def fresh():
        return UNet2DConditionModel.from_pretrained(tiny_models["sd1"] / "unet").eval()

    base = model_key(fresh(), "cpu")
    changed = fresh()
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(1.0)
    assert model_key(changed, "cpu") == base  # the weights are handed over at load, never baked in
    assert model_key(fresh().half(), "cpu") != base
    assert model_key(fresh().to(memory_format=torch.channels_last), "cpu") != base
    fused = fresh()
    fused.fuse_qkv_projections()
    assert model_key(fused, "cpu") != base
    assert model_key(fresh(), "cpu", extra={"options": {"max_autotune": True}}) != base


def test_input_key_covers_shapes_dtypes_scalars_and_refuses_other_objects():
    x = torch.randn(2, 4, 8, 8)
    key = input_key((x, torch.tensor(3)), {"flag": None, "return_dict": False}, "cpu")
    assert key == input_key((torch.randn(2, 4, 8, 8), torch.tensor(9)), {"flag": None, "return_dict": False}, "cpu")
    assert key != input_key((x[:1], torch.tensor(3)), {"flag": None, "return_dict": False}, "cpu")
    assert key != input_key((x.half(), torch.tensor(3)), {"flag": None, "return_dict": False}, "cpu")
    assert key != input_key((x, torch.tensor(3)), {"flag": None, "return_dict": True}, "cpu")
    assert input_key((x, object()), {}, "cpu") is None
    assert input_key((torch.randn(2, requires_grad=True),), {}, "cpu") is None
    moved = aotpackages.to_device(((x, torch.tensor(3)), {}), "meta")
    assert moved[0][1].device.type == "meta"


def test_fast_path_compiles_the_unet_ahead_of_time_and_matches_eager(engine, tiny_models, monkeypatch, tmp_path):
    from sdplay.accel.fastgraphs import eager_recorder
    from sdplay.accel.fastpath import FastConfig, accelerate
    from sdplay.engine import Engine
    from sdplay.types import GenerationRequest

    calls = []
    monkeypatch.setattr(aotpackages, "compile_package", export_compiler(calls))
    monkeypatch.setattr(aotpackages, "load_package", export_loader)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    request = GenerationRequest(prompt="a red heart", model=str(tiny_models["sd1"]), width=64, height=64, steps=3,
                                seed=7, sampler="Euler", guidance=7.5)  # fmt: skip
    eager = engine.generate(request)
    fast_engine = Engine(fast=False)
    loaded, _ = fast_engine.load(str(tiny_models["sd1"]))
    choices = accelerate(loaded.pipe, loaded.device, FastConfig.parse("compile=aoti"), recorder=eager_recorder)
    assert choices["compiled"] == ["unet: ahead-of-time packages (inductor)"]
    fast = fast_engine.generate(request)
    fast_engine.generate(request.with_(seed=8))
    a, b = np.asarray(eager.images[0], dtype=np.int16), np.asarray(fast.images[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 1
    stats = loaded.pipe.sdplay_fast.stats()
    assert stats["aot_packages"]["compiled"] == 1 and stats["aot_packages"]["loaded"] == 1
    assert not stats["aot_packages"]["failures"] and stats["unet"]["captures"] == 1
    assert len(list((tmp_path / "aot").rglob("*.pt2"))) == 1 and len(calls) == 1


def test_precompiled_package_is_made_once_loaded_by_a_restart_and_follows_the_weights(tiny_models, tmp_path,
                                                                                       monkeypatch):  # fmt: skip
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from sdplay.accel.fastpath import fuse_qkv

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    unet = UNet2DConditionModel.from_pretrained(tiny_models["sdxl"] / "unet").eval().requires_grad_(False)
    fuse_qkv(SimpleNamespace(unet=unet, vae=None))
    unet.to(memory_format=torch.channels_last)  # as the fast path leaves it
    args, kwargs = inputs(unet, 2, 32)
    with torch.inference_mode():
        expected = unet(*args, **kwargs)[0]
        packaged = aotpackages.install(unet, tmp_path / "aot", "cpu")
        torch.testing.assert_close(unet(*args, **kwargs)[0], expected, rtol=1e-4, atol=1e-5)
        assert (packaged.stats.compiled, packaged.stats.loaded, packaged.stats.failures) == (1, 1, [])
        del unet.forward  # a restart: a new packaged forward over the same folder finds the saved package
        restarted = aotpackages.install(unet, tmp_path / "aot", "cpu")
        torch.testing.assert_close(unet(*args, **kwargs)[0], expected, rtol=1e-4, atol=1e-5)
        assert (restarted.stats.compiled, restarted.stats.loaded, restarted.stats.fallback_calls) == (0, 1, 0)
        for p in unet.parameters():  # new weights in the same tensors: the package reads them, nothing is baked in
            p.mul_(0.9)
        changed = unet(*args, **kwargs)[0]
        del unet.forward
        torch.testing.assert_close(changed, unet(*args, **kwargs)[0], rtol=1e-4, atol=1e-5)
    assert (changed - expected).abs().max() > 1e-2
    assert len(list((tmp_path / "aot").rglob("*.bin"))) == 1


def test_precompile_refuses_a_forward_wrapped_on_the_instance(unet, tmp_path):
    packaged = PackagedForward(unet, tmp_path, "cpu", compiler=aotpackages.precompile,
                               loader=aotpackages.load_precompiled, fallback=lambda *a, **k: "fallback")  # fmt: skip
    packaged.forward = lambda *a, **k: None  # what precompile would compile is not the module's own forward
    args, kwargs = inputs(unet, 2, 32)
    with torch.inference_mode():
        assert packaged(*args, **kwargs) == "fallback"
    assert packaged.stats.failures and "wrapped on this instance" in packaged.stats.failures[0]
