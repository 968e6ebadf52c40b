"""Generation on tiny random SD1 (epsilon), SD2 (v-prediction) and SDXL (two encoders) models."""

import numpy as np
import pytest

from sdplay.errors import Cancelled, InvalidRequest, ModelNotAvailable
from sdplay.samplers import sampler_names
from sdplay.types import GenerationRequest

FAMILIES = ("sd1", "sd2", "sdxl")


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "width": 64, "height": 64, "steps": 3, "seed": 7}
    return GenerationRequest(**(base | kw))


def pixels(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_pixels_other_seed_differs(engine, tiny_models, family):
    a = engine.generate(req(tiny_models[family]))
    b = engine.generate(req(tiny_models[family]))
    c = engine.generate(req(tiny_models[family], seed=8))
    assert a.images[0].size == (64, 64)
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1.0
    assert a.metadata["family"] == family


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_runs_and_is_deterministic(engine, tiny_models, sampler):
    model = tiny_models["sd2" if "SDE" in sampler else "sd1"]
    a = engine.generate(req(model, sampler=sampler, steps=4))
    b = engine.generate(req(model, sampler=sampler, steps=4))
    assert a.request.sampler == sampler
    assert np.array_equal(pixels(a), pixels(b))
    assert not a.metadata["warnings"]


def test_v_prediction_kept_for_sd2(engine, tiny_models):
    res = engine.generate(req(tiny_models["sd2"], sampler="Euler a"))
    assert engine.load(str(tiny_models["sd2"]))[0].pipe.scheduler.config.prediction_type == "v_prediction"
    assert res.metadata["family"] == "sd2"


def test_image_i_uses_seed_plus_i(engine, tiny_models):
    many = engine.generate(req(tiny_models["sd1"], n_images=3, seed=100, batch_size=2))
    assert many.seeds == [100, 101, 102]
    single = engine.generate(req(tiny_models["sd1"], seed=102))
    assert np.abs(pixels(many, 2) - pixels(single)).max() <= 1


def test_random_seed_is_drawn_and_recorded(engine, tiny_models):
    res = engine.generate(req(tiny_models["sd1"], seed=-1))
    assert 0 <= res.seeds[0] < 2**32 and res.request.seed == res.seeds[0]
    again = engine.generate(req(tiny_models["sd1"], seed=res.seeds[0]))
    assert np.array_equal(pixels(res), pixels(again))


@pytest.mark.parametrize("family", FAMILIES)
def test_long_prompts_are_chunked_not_cut(engine, tiny_models, family):
    short = "a red heart"
    long = short + ", on a table" * 40 + ", blue"
    a = engine.generate(req(tiny_models[family], prompt=long))
    b = engine.generate(req(tiny_models[family], prompt=long.removesuffix(", blue")))
    assert a.metadata["text_chunks"] >= 2
    assert not np.array_equal(pixels(a), pixels(b)), "words past 77 tokens must change the image"


def test_steps_are_reported_and_cancellation_stops(engine, tiny_models):
    seen = []
    engine.generate(req(tiny_models["sd1"], steps=5), on_step=lambda info: seen.append((info.step, info.total_steps)))
    assert seen == [(i, 5) for i in range(1, 6)]

    def cancel_at_2(info):
        if info.step == 2:
            raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        engine.generate(req(tiny_models["sd1"], steps=5), on_step=cancel_at_2)
    assert engine.generate(req(tiny_models["sd1"])).images, "the engine works after a cancel"


def test_batched_requests_equal_single_runs(engine, tiny_models):
    model = tiny_models["sd1"]
    reqs = [req(model, prompt="red heart", seed=1), req(model, prompt="blue heart", seed=2, n_images=2)]
    together = engine.generate_batch(reqs)
    for r, res in zip(reqs, together, strict=True):
        alone = engine.generate(r)
        assert res.seeds == alone.seeds and res.request.prompt == r.prompt
        for i in range(len(res.images)):
            # Equal up to float rounding: on the CPU, MKL's matrix products round a row differently depending on
            # how many rows the matrix has (torch 2.13: F.linear of 1 row vs of 2+ rows already differs, from the
            # UNet's time embedding on), and a batch has more rows than a lone image; a level or two after 20 steps.
            diff = np.abs(pixels(res, i) - pixels(alone, i)).max()
            assert diff <= 2, f"image {i} of {r.prompt!r} differs by {diff} levels when batched"


def test_incompatible_batch_is_refused(engine, tiny_models):
    with pytest.raises(InvalidRequest, match="share steps"):
        engine.generate_batch([req(tiny_models["sd1"], steps=2), req(tiny_models["sd1"], steps=3)])


def test_timings_and_metadata(engine, tiny_models):
    res = engine.generate(req(tiny_models["sdxl"]))
    t = res.timings
    assert t.text_encoding > 0 and t.denoising > 0 and t.decoding > 0
    assert t.total >= t.text_encoding + t.denoising + t.decoding
    meta = res.metadata
    assert meta["device"]["id"] == "cpu" and meta["dtype"] == "float32"
    assert meta["optimisation"]["attention"] == "sdpa"
    assert meta["optimisation"]["ipex"] in ("not installed",) or meta["optimisation"]["ipex"].startswith("ipex")
    assert set(meta["versions"]) >= {"sdplay", "torch", "diffusers", "transformers"}


def test_missing_weights_teach(engine, tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailable) as err:
        engine.generate(GenerationRequest(prompt="x", model="sd-v1-4", steps=1))
    text = str(err.value)
    assert "hf download CompVis/stable-diffusion-v1-4 --include" in text and "HF_HUB_OFFLINE" in text
    index = '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    (tmp_path / "model_index.json").write_text(index)
    with pytest.raises(ModelNotAvailable, match="unet/ is missing"):
        engine.generate(GenerationRequest(prompt="x", model=str(tmp_path), steps=1))


def test_model_cache_is_lru_within_budget(tiny_models):
    from sdplay.engine import Engine, model_bytes

    eng = Engine(max_models=2)
    for fam in ("sd1", "sd2", "sdxl"):
        eng.load(str(tiny_models[fam]))
    assert eng.loaded_models() == [str(tiny_models["sd2"]), str(tiny_models["sdxl"])]
    eng.load(str(tiny_models["sd2"]))  # a hit moves it to the end
    assert eng.loaded_models()[-1] == str(tiny_models["sd2"])
    one = model_bytes(eng.load(str(tiny_models["sd1"]))[0].pipe)
    budget = Engine(max_models=8, memory_budget_bytes=int(one * 1.5))
    budget.load(str(tiny_models["sd1"]))
    budget.load(str(tiny_models["sd2"]))
    assert budget.loaded_models() == [str(tiny_models["sd2"])]


@pytest.mark.parametrize(("family", "vae_dtype"), [("sd1", "bfloat16"), ("sd2", "bfloat16"), ("sdxl", "float32")])
def test_only_sdxl_vae_is_upcast(engine, tiny_models, family, vae_dtype):
    res = engine.generate(req(tiny_models[family], dtype="bf16", steps=2))
    loaded, _ = engine.load(str(tiny_models[family]), dtype="bf16")
    assert str(loaded.pipe.vae.dtype) == f"torch.{vae_dtype}"
    assert str(loaded.pipe.unet.dtype) == "torch.bfloat16"
    assert res.metadata["optimisation"]["vae_dtype"].startswith(vae_dtype)
    assert not res.metadata["warnings"]


def test_out_of_memory_says_what_would_fit(engine, tiny_models):
    import torch

    from sdplay.errors import DeviceOutOfMemory

    def exhaust(info):  # the allocator's own error, raised mid-denoise as a real OOM would be
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(DeviceOutOfMemory) as err:
        engine.generate(req(tiny_models["sd1"], n_images=2, width=1024, height=1024, steps=1), on_step=exhaust)
    text = str(err.value)
    assert "batch size 1" in text and "768x768" in text and "--attention-slicing" in text
    assert engine.generate(req(tiny_models["sd1"], steps=1)).images, "the engine still works afterwards"
