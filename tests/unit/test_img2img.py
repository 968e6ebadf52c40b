"""Image-to-image, inpainting, outpainting and hires fix on tiny random SD1, SD2 and SDXL models, and a tiny
dedicated 9-channel inpainting model: every task runs, is reproducible, keeps what it must, and says what it did."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from sdplay.errors import Cancelled, InvalidRequest
from sdplay.images import parameters_for, parse_parameters, png_bytes, read_png_info
from sdplay.masking import Outpaint
from sdplay.types import GenerationRequest, HiresFix

FAMILIES = ("sd1", "sd2", "sdxl")


def picture(w=64, h=64):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (220, 30, 30)
    arr[:, w // 2 :] = (30, 30, 220)
    arr[h // 4 : h // 2, w // 4 : w // 2] = (250, 250, 20)
    return Image.fromarray(arr)


def left_mask(w=64, h=64):
    mask = Image.new("L", (w, h))
    mask.paste(255, (0, 0, w // 2, h))
    return mask


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "steps": 3, "seed": 5}
    return GenerationRequest(**(base | kw))


def px(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_task_runs_and_is_reproducible(engine, tiny_models, family):
    model, img = tiny_models[family], picture()
    tasks = ({"init_image": img, "strength": 0.6}, {"init_image": img, "mask": left_mask()},
             {"init_image": img, "outpaint": Outpaint(right=16)},
             {"width": 32, "height": 32, "hires": HiresFix(scale=2.0, steps=2)})  # fmt: skip
    for n, kw in enumerate(tasks):
        a, b = engine.generate(req(model, **kw)), engine.generate(req(model, **kw))
        assert np.array_equal(px(a), px(b)), kw
        assert a.images[0].size == ((80, 64) if "outpaint" in kw else (64, 64)), kw
        assert a.metadata["family"] == family and not a.metadata["warnings"]
        if n == 0:
            other = engine.generate(req(model, seed=6, **kw))
            assert np.abs(px(a) - px(other)).mean() > 0.5


def test_inpainting_keeps_pixels_outside_the_blurred_mask(engine, tiny_models):
    img = picture()
    res = engine.generate(req(tiny_models["sd1"], init_image=img, mask=left_mask(), mask_blur=4, strength=1.0))
    out, orig = px(res), np.asarray(img).astype(np.int16)
    assert np.array_equal(out[:, 48:], orig[:, 48:])  # beyond the blur edge: the original, bit for bit
    assert np.abs(out[:, :16] - orig[:, :16]).mean() > 10  # the masked half was repainted


def test_outpainting_keeps_the_original_region(engine, tiny_models):
    img = picture()
    res = engine.generate(req(tiny_models["sd2"], init_image=img, outpaint=Outpaint(left=16, top=8), mask_blur=2))
    assert res.images[0].size == (80, 72)
    out, orig = px(res), np.asarray(img).astype(np.int16)
    assert np.array_equal(out[8 + 12 :, 16 + 12 :], orig[12:, 12:])


def test_only_masked_repaints_the_crop_and_returns_the_full_image(engine, tiny_models):
    img, mask = picture(128, 128), Image.new("L", (128, 128))
    mask.paste(255, (96, 96, 112, 112))
    res = engine.generate(req(tiny_models["sd1"], init_image=img, mask=mask, inpaint_full_res=True,
                              inpaint_padding=8, mask_blur=0, width=32, height=32, strength=1.0))  # fmt: skip
    out, orig = px(res), np.asarray(img).astype(np.int16)
    assert res.images[0].size == (128, 128)
    assert np.array_equal(out[:90], orig[:90])
    assert np.abs(out[96:112, 96:112] - orig[96:112, 96:112]).mean() > 5


@pytest.mark.parametrize("fill", ["fill", "original", "latent noise", "latent nothing"])
def test_masked_content_modes_differ(engine, tiny_models, fill):
    kw = {"init_image": picture(), "mask": left_mask(), "strength": 0.5}
    res = engine.generate(req(tiny_models["sd1"], inpaint_fill=fill, **kw))
    other = engine.generate(req(tiny_models["sd1"], inpaint_fill="original" if fill != "original" else "fill", **kw))
    assert np.abs(px(res)[:, :24] - px(other)[:, :24]).mean() > 0.5
    assert parse_parameters(parameters_for(res, 0))["Masked content"] == fill


def test_image_i_uses_seed_plus_i(engine, tiny_models):
    kw = {"init_image": picture(), "mask": left_mask()}
    many = engine.generate(req(tiny_models["sd1"], n_images=3, batch_size=2, seed=40, **kw))
    single = engine.generate(req(tiny_models["sd1"], seed=42, **kw))
    assert many.seeds == [40, 41, 42]
    assert np.abs(px(many, 2) - px(single)).max() <= 1


def test_batch_of_requests_with_their_own_images_equals_each_alone(engine, tiny_models):
    a = req(tiny_models["sd1"], init_image=picture(), strength=0.7)
    b = req(tiny_models["sd1"], init_image=picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT), strength=0.7, seed=9)
    together = engine.generate_batch([a, b])
    for alone, res in zip((engine.generate(a), engine.generate(b)), together, strict=True):
        assert np.abs(px(alone) - px(res)).max() <= 1
    with pytest.raises(InvalidRequest, match="task"):
        engine.generate_batch([a, req(tiny_models["sd1"], width=64, height=64)])


def test_progress_counts_the_steps_of_each_pass_and_cancel_stops(engine, tiny_models):
    seen = []
    engine.generate(req(tiny_models["sd1"], init_image=picture(), strength=0.5, steps=8), on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4] and seen[-1].total_steps == 4
    seen.clear()
    hr = HiresFix(scale=1.5, steps=4, strength=0.5)
    engine.generate(req(tiny_models["sd1"], width=32, height=32, hires=hr, steps=3), on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4, 5] and seen[-1].total_steps == 5 and seen[-1].fraction == 1.0

    def stop(info):
        if info.step == 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        engine.generate(req(tiny_models["sd1"], init_image=picture(), mask=left_mask(), steps=6), on_step=stop)


def test_metadata_carries_every_new_parameter(engine, tiny_models):
    res = engine.generate(req(tiny_models["sd1"], init_image=picture(), mask=left_mask(), strength=0.6, mask_blur=3,
                              mask_invert=True, inpaint_fill="latent noise"))  # fmt: skip
    info = read_png_info(png_bytes(res, 0))
    fields = info["fields"]
    assert fields["Denoising strength"] == "0.6" and fields["Mask blur"] == "3"
    assert fields["Mask mode"] == "Inpaint not masked" and len(fields["Init image hash"]) == 10
    record = info["sdplay"]["request"]
    assert record["init_image"]["sha256"].startswith(fields["Init image hash"]) and record["init_image"]["width"] == 64
    assert record["strength"] == 0.6 and record["inpaint_fill"] == "latent noise"
    json.dumps(res.request.to_dict())
    hr = HiresFix(scale=1.5, upscaler="Lanczos", steps=2)
    hires = engine.generate(req(tiny_models["sd1"], width=32, height=32, hires=hr))
    fields = parse_parameters(parameters_for(hires, 0))
    assert fields["Hires upscale"] == "1.5" and fields["Hires upscaler"] == "Lanczos" and fields["Hires steps"] == "2"
    assert fields["Denoising strength"] == "0.7" and hires.images[0].size == (48, 48)
    assert "Init image hash" not in fields and "Mask blur" not in fields  # text-to-image has neither
    sized = engine.generate(req(tiny_models["sd1"], width=32, height=32, hires=HiresFix(width=64, height=48)))
    fields = read_png_info(png_bytes(sized, 0))["fields"]
    assert fields["Hires resize"] == "64x48" and "Hires steps" not in fields  # 0 steps: as many as the first pass


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest)", "Latent (bicubic)", "Latent (antialiased)",
                                      "Latent (nearest-exact)", "Lanczos"])  # fmt: skip
def test_hires_upscalers_give_the_scaled_size(engine, tiny_models, upscaler):
    res = engine.generate(req(tiny_models["sd1"], width=32, height=24, hires=HiresFix(width=64, upscaler=upscaler)))
    assert res.images[0].size == (64, 48)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"strength": math.nan}, "denoising_strength"),
        ({"strength": 1.5}, "between 0 and 1"),
        ({"mask": left_mask(32, 32)}, "32x32 but the image is 64x64"),
        ({"inpaint_fill": "magic"}, "inpainting_fill"),
        ({"resize_mode": 7}, "resize_mode"),
        ({"hires": HiresFix()}, "text-to-image"),
    ],
)
def test_bad_image_inputs_are_refused(engine, tiny_models, kw, match):
    with pytest.raises(InvalidRequest, match=match):
        engine.generate(req(tiny_models["sd1"], init_image=picture(), **kw))


def test_mask_without_image_and_hires_over_the_limit(engine, tiny_models):
    with pytest.raises(InvalidRequest, match="needs an init image"):
        engine.generate(req(tiny_models["sd1"], mask=left_mask()))
    with pytest.raises(InvalidRequest, match="largest hires scale that fits 1024x1024 is 2"):
        engine.generate(req(tiny_models["sd1"], width=1024, height=1024, hires=HiresFix(scale=3.0)))


@pytest.fixture(scope="module")
def inpainting_model(tmp_path_factory, tiny_models):
    """A tiny dedicated inpainting model (9-channel UNet) in the layout of the published SD inpainting folders."""
    import shutil

    from diffusers import UNet2DConditionModel

    out = tmp_path_factory.mktemp("inpainting") / "sd1-inpainting"
    shutil.copytree(tiny_models["sd1"], out)
    cfg = json.loads((out / "unet" / "config.json").read_text()) | {"in_channels": 9}
    UNet2DConditionModel.from_config(cfg).save_pretrained(out / "unet", safe_serialization=True)
    index = json.loads((out / "model_index.json").read_text()) | {"_class_name": "StableDiffusionInpaintPipeline"}
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def test_nine_channel_inpainting_model_is_detected_and_used(engine, inpainting_model):
    kw = {"init_image": picture(), "mask": left_mask(), "strength": 1.0}
    a, b = engine.generate(req(inpainting_model, **kw)), engine.generate(req(inpainting_model, **kw))
    assert np.array_equal(px(a), px(b))
    assert np.array_equal(px(a)[:, 48:], np.asarray(picture()).astype(np.int16)[:, 48:])
    loaded = engine.load(str(inpainting_model))[0]
    assert loaded.pipe.unet.config.in_channels == 9 and type(loaded.pipe).__name__ == "StableDiffusionInpaintPipeline"
    plain = engine.generate(req(inpainting_model, width=64, height=64))  # text-to-image on an inpainting UNet
    img2img = engine.generate(req(inpainting_model, init_image=picture(), strength=0.5))
    assert plain.images[0].size == img2img.images[0].size == (64, 64)


def test_task_pipelines_share_the_loaded_modules(engine, tiny_models):
    from sdplay.passes import task_pipe

    loaded = engine.load(str(tiny_models["sdxl"]))[0]
    for task in ("img2img", "inpaint"):
        pipe = task_pipe(loaded, task)
        assert pipe.unet is loaded.pipe.unet and pipe.vae is loaded.pipe.vae
        assert pipe.text_encoder_2 is loaded.pipe.text_encoder_2
        assert task_pipe(loaded, task) is pipe


def test_several_init_images_cycle_over_the_images_of_the_request(engine, tiny_models):
    from sdplay.image_input import image_hash

    a, b = picture(), picture().transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    kw = {"strength": 0.7, "mask": left_mask()}
    many = engine.generate(req(tiny_models["sd1"], init_image=a, extra_init_images=(b,), n_images=4, batch_size=2,
                               seed=20, **kw))  # fmt: skip
    assert many.seeds == [20, 21, 22, 23]
    for k, (img, seed) in enumerate(((a, 20), (b, 21), (a, 22), (b, 23))):
        alone = engine.generate(req(tiny_models["sd1"], init_image=img, seed=seed, **kw))
        assert np.abs(px(many, k) - px(alone)).max() <= 1, k
        assert parse_parameters(parameters_for(many, k))["Init image hash"] == image_hash(img)[:10]
    assert np.array_equal(px(many, 1)[:, 48:], np.asarray(b).astype(np.int16)[:, 48:])  # b's own pixels kept
    record = many.request.to_dict()
    assert record["extra_init_images"] == [{"width": 64, "height": 64, "sha256": image_hash(b)}]


def test_several_init_images_of_other_sizes_are_fitted_without_a_mask(engine, tiny_models):
    res = engine.generate(req(tiny_models["sd1"], init_image=picture(), extra_init_images=(picture(96, 48),),
                              n_images=2, strength=0.5))  # fmt: skip
    assert [im.size for im in res.images] == [(64, 64), (64, 64)]
    with pytest.raises(InvalidRequest, match="init image 2 is 96x48 but the first is 64x64") as info:
        engine.plan(req(tiny_models["sd1"], init_image=picture(), extra_init_images=(picture(96, 48),),
                        mask=left_mask()))  # fmt: skip
    assert "Resize the images to 64x64" in info.value.hint
    with pytest.raises(InvalidRequest, match="needs init_image"):
        engine.plan(req(tiny_models["sd1"], extra_init_images=(picture(),)))


def test_image_inputs_keep_every_modules_dtype(tiny_models):
    """A half-precision model stays half precision after image-to-image and inpainting: the task pipelines share
    its modules, and diffusers 0.42's from_pipe cast them all to float32 (bfloat16 here: the CPU has no float16)."""
    import torch

    from sdplay.engine import Engine

    engine = Engine()
    model = str(tiny_models["sdxl"])
    engine.generate(req(model, dtype="bfloat16", steps=2))
    loaded, _ = engine.load(model, dtype="bfloat16")

    def dtypes():
        return {n: m.dtype for n, m in loaded.pipe.components.items() if isinstance(m, torch.nn.Module)}

    before = dtypes()
    assert before["unet"] == torch.bfloat16
    engine.generate(req(model, dtype="bfloat16", steps=2, init_image=picture(), strength=0.6))
    engine.generate(req(model, dtype="bfloat16", steps=2, init_image=picture(), mask=left_mask(), strength=1.0))
    assert dtypes() == before
