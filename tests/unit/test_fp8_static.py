"""Static float8 linear layers (fast-path option fp8=static) on the CPU: the arithmetic, calibration, the engine
path, what they cost the embedded model's pictures, and the clear refusal of a LoRA on top of them.

torch._scaled_mm runs on the CPU too, so these are the real kernels' semantics; speed is measured on the GPU
(docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import make_kohya_lora

from sdplay.accel import fp8
from sdplay.accel.fastgraphs import eager_recorder
from sdplay.accel.fastpath import FastConfig, accelerate, fuse_qkv
from sdplay.engine import Engine
from sdplay.errors import InvalidRequest
from sdplay.training.evaluate import colour_share
from sdplay.types import GenerationRequest

FP8 = "compile=none,graphs=false,fp8=static"


def linear(k: int = 64, n: int = 48) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(k, n)


def test_static_float8_linear_is_float8_arithmetic_with_fixed_scales():
    lin = linear()
    x = torch.randn(10, 64) * 3
    layer = fp8.StaticFloat8Linear(lin, float(x.abs().max()))
    x_scale, w_scale = float(x.abs().max()) / 448, float(lin.weight.detach().abs().max()) / 448
    x8 = (x / x_scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * x_scale
    w8 = (lin.weight / w_scale).to(torch.float8_e4m3fn).float() * w_scale
    expected = x8 @ w8.T + lin.bias
    with torch.no_grad():
        out, exact = layer(x), lin(x)
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4)
    error = float((out - exact).norm() / exact.norm())
    assert 1e-3 < error < 6e-2  # quantized (not the float32 layer), within e4m3's few percent
    assert layer(x.reshape(2, 5, 64)).shape == (2, 5, 48)  # leading dimensions kept


def test_inputs_beyond_the_calibrated_range_saturate_instead_of_overflowing():
    lin = linear()
    layer = fp8.StaticFloat8Linear(lin, 1.0)
    x = torch.full((4, 64), 1000.0)
    with torch.no_grad():
        out = layer(x)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        assert torch.allclose(out, layer(torch.full((4, 64), 1.0)), rtol=1e-5)  # clipped at the calibrated max


def test_a_tiny_calibrated_range_still_gives_a_finite_fp16_scale():
    layer = fp8.StaticFloat8Linear(linear().half(), 1e-5)
    assert torch.isfinite(layer.scales()[2].to(torch.float16)).all()
    with torch.no_grad():
        out = layer(torch.zeros(3, 64, dtype=torch.float16))
    assert torch.isfinite(out).all() and out.dtype == torch.float16


def test_a_float32_output_adds_the_bias_outside_the_kernel():
    lin = linear()
    x = torch.randn(5, 64)
    layer = fp8.StaticFloat8Linear(lin, float(x.abs().max()))
    with torch.no_grad():
        out = layer(x)
        no_bias = fp8.StaticFloat8Linear(torch.nn.Linear(64, 48, bias=False), 1.0)
    assert no_bias(x).shape == (5, 48)
    assert float((out - lin(x)).norm() / lin(x).norm()) < 6e-2


def test_a_cast_of_the_whole_model_leaves_the_float8_layer_intact():
    layer = fp8.StaticFloat8Linear(linear(), 4.0)
    x = torch.randn(6, 64)
    with torch.no_grad():
        before = layer(x)
        layer.to(torch.float16)
        after = layer(x.half())
    assert after.dtype == torch.float16 and torch.allclose(after.float(), before, rtol=2e-2, atol=2e-2)
    scales = [float(v) for v in layer.scales()]
    layer.to(torch.bfloat16)
    assert [float(v) for v in layer.scales()] == scales  # bit for bit: the scales are kept as their bytes


def test_calibration_covers_the_called_projections_only(tiny_models):
    loaded, _ = Engine(fast=False).load(str(tiny_models["sd1"]))
    fuse_qkv(loaded.pipe)
    peaks = fp8.calibrate(loaded.pipe.unet, fp8.calibration_run(loaded.pipe, loaded.family_spec))
    names = set(peaks)
    assert any(n.endswith("attn1.to_qkv") for n in names) and any(n.endswith("ff.net.2") for n in names)
    assert not any(n.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v")) for n in names)  # views of to_qkv
    assert not any(n.endswith(("attn2.to_k", "attn2.to_v", "attn2.to_kv")) for n in names)  # text projections
    assert all(v > 0 for v in peaks.values())
    # each peak is the largest input that layer saw, as a hook of our own measures it
    name = next(n for n in names if n.endswith("ff.net.2"))
    seen = []
    layer = loaded.pipe.unet.get_submodule(name)
    handle = layer.register_forward_hook(lambda _m, args, _o: seen.append(float(args[0].abs().max())))
    with torch.no_grad():
        fp8.calibration_run(loaded.pipe, loaded.family_spec)()
    handle.remove()
    assert peaks[name] == pytest.approx(max(seen), rel=1e-6) and len(seen) == 2 * len(fp8.CALIBRATION_TIMESTEPS)
    fp8.quantize(loaded.pipe.unet, peaks)
    quantized = loaded.pipe.unet.get_submodule(name)
    assert float(quantized.scales()[1]) == pytest.approx(peaks[name] * fp8.MARGIN / fp8.E4M3_MAX, rel=1e-6)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fp8_static_through_the_engine_stays_close_to_the_fast_path(tiny_models, family):
    def request():
        return GenerationRequest(prompt="a red heart", model=str(tiny_models[family]), width=64, height=64,
                                 steps=3, seed=7)  # fmt: skip

    plain = Engine(fast=True, fast_options="compile=none,graphs=false").generate(request())
    engine = Engine(fast=True, fast_options=FP8)
    quantized = engine.generate(request())
    loaded, _ = engine.load(str(tiny_models[family]))
    assert fp8.layers(loaded.pipe.unet) > 0
    assert quantized.metadata["optimisation"]["fast_path"]["fp8_linear_layers"]["layers"] == fp8.layers(
        loaded.pipe.unet
    )
    a, b = (np.asarray(r.images[0], np.float64) for r in (plain, quantized))
    psnr = 10 * np.log10(255**2 / ((a - b) ** 2).mean())
    assert 30 < psnr < 80, psnr  # it changed the arithmetic, and only a little


def test_unknown_float8_modes_are_refused(tiny_models):
    loaded, _ = Engine(fast=False).load(str(tiny_models["sd1"]))
    assert FastConfig.parse("fp8=true").fp8 == "dynamic" and FastConfig.parse("fp8=off").fp8 == "off"
    with pytest.raises(InvalidRequest, match="Unknown float8 mode") as err:
        accelerate(loaded.pipe, loaded.device, FastConfig.parse("fp8=sometimes,backend=eager"), recorder=eager_recorder)
    assert "static" in err.value.hint


def test_a_lora_on_float8_layers_is_refused_with_what_to_change(tiny_models, tmp_path):
    make_kohya_lora(tiny_models["sd1"], tmp_path / "ink.safetensors")
    engine = Engine(fast=True, fast_options=FP8, lora_dir=str(tmp_path))
    req = GenerationRequest(prompt="a red heart <lora:ink:0.8>", model=str(tiny_models["sd1"]), width=64, height=64,
                            steps=2, seed=1)  # fmt: skip
    with pytest.raises(InvalidRequest, match="fp8=static") as err:
        engine.generate(req)
    assert "fast-options" in err.value.hint
    ok = engine.generate(GenerationRequest(prompt="a red heart", model=str(tiny_models["sd1"]), width=64, height=64,
                                           steps=2, seed=1))  # fmt: skip
    assert ok.images  # the refusal left the engine usable


def test_fp8_static_keeps_what_the_embedded_model_draws():
    """On the trained model the pixels move (about 36-42 dB) but the picture stays: colours of the hearts hold."""
    prompts = ["red heart", "blue heart", "green heart"]
    base = Engine(fast=True, fast_options="compile=none,graphs=false")
    quant = Engine(fast=True, fast_options=FP8)
    for prompt in prompts:
        req = GenerationRequest(prompt, model="sdplay-emoji", seed=0, device="cpu")
        a = np.asarray(base.generate(req).images[0].convert("RGB"))
        b = np.asarray(quant.generate(req).images[0].convert("RGB"))
        colour = prompt.split()[0]
        assert colour_share(b, colour) > 0.85, (prompt, colour_share(b, colour))
        assert abs(colour_share(a, colour) - colour_share(b, colour)) < 0.05
        assert not np.array_equal(a, b)  # the float8 layers ran


def test_fp8_static_serves_image_inputs_and_feature_reuse(tiny_models):
    from PIL import Image

    engine = Engine(fast=True, fast_options=FP8 + ",deepcache=2")
    base = {"prompt": "a red heart", "model": str(tiny_models["sd1"]), "width": 64, "height": 64, "steps": 4, "seed": 3}
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    for extra in ({}, {"init_image": init, "strength": 0.6}, {"init_image": init, "mask": mask, "strength": 1.0}):
        result = engine.generate(GenerationRequest(**(base | extra)))
        assert np.isfinite(np.asarray(result.images[0], np.float64)).all() and result.images[0].size == (64, 64)
    loaded, _ = engine.load(str(tiny_models["sd1"]))
    assert fp8.layers(loaded.pipe.unet) > 0
