"""Images in through the APIs, end to end on the real engine with the embedded model: the real `webuiapi`
client (img2img with and without a mask, hires fix) and the real `openai` client (edit with a mask, variation)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from live import live_server
from PIL import Image

from sdplay import catalog

EMOJI = catalog.builtin("sdplay-emoji")
pytestmark = pytest.mark.skipif(
    EMOJI is None or EMOJI.weights_dir is None or not (EMOJI.weights_dir / "model_index.json").is_file(),
    reason="the sdplay-emoji weights are not in the package",
)


def heart() -> Image.Image:
    """A red disc on white: what the emoji model knows as a red shape."""
    yy, xx = np.mgrid[:64, :64]
    arr = np.full((64, 64, 3), 255, np.uint8)
    arr[(yy - 32) ** 2 + (xx - 32) ** 2 < 22**2] = (230, 40, 40)
    return Image.fromarray(arr)


def left_half_mask() -> Image.Image:
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    return mask


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from sdplay.engine import Engine

    with live_server(tmp_path_factory.mktemp("images-in"), Engine(device="cpu")) as s:
        yield s


def _api(real) -> webuiapi.WebUIApi:
    host, port = real.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="DPM++ 2M", steps=6)


def test_webuiapi_img2img_and_inpainting(real):
    api = _api(real)
    plain = api.img2img(images=[heart()], prompt="blue heart", width=64, height=64, denoising_strength=0.8,
                        seed=3, cfg_scale=4)  # fmt: skip
    assert plain.image.size == (64, 64)
    assert plain.info["denoising_strength"] == 0.8 and plain.info["all_seeds"] == [3]
    assert "Denoising strength: 0.8" in plain.info["infotexts"][0]
    masked = api.img2img(images=[heart()], mask_image=left_half_mask(), prompt="blue heart", width=64, height=64,
                         denoising_strength=1.0, seed=3, cfg_scale=4, inpaint_full_res=False, mask_blur=2)  # fmt: skip
    out, orig = np.asarray(masked.image.convert("RGB")).astype(int), np.asarray(heart()).astype(int)
    assert masked.image.size == (64, 64)
    assert np.array_equal(out[:, 44:], orig[:, 44:])  # outside the mask and its blurred edge: untouched
    assert np.abs(out[:, :24] - orig[:, :24]).mean() > 5
    assert "Mask blur: 2" in masked.info["infotexts"][0]


def test_webuiapi_img2img_with_several_init_images_gives_one_per_image_of_the_batch(real):
    """A1111: several init_images set batch_size to their number, each image of the batch takes its own, and every
    n_iter repeats them (with seed + i for image i)."""
    api = _api(real)
    flipped = heart().transpose(Image.Transpose.ROTATE_90)
    flipped.paste((30, 30, 220), (40, 0, 64, 64))  # its right side differs from heart()'s
    res = api.img2img(images=[heart(), flipped], mask_image=left_half_mask(), prompt="blue heart", width=64,
                      height=64, denoising_strength=0.9, seed=7, cfg_scale=4, batch_size=2, n_iter=2, mask_blur=2,
                      inpaint_full_res=False)  # fmt: skip
    assert len(res.images) == 4 and res.info["all_seeds"] == [7, 8, 9, 10]
    for k, img in enumerate(res.images):
        out, init = np.asarray(img.convert("RGB")).astype(int), np.asarray([heart(), flipped][k % 2]).astype(int)
        assert np.array_equal(out[:, 44:], init[:, 44:]), k  # its own init image outside the mask
    hashes = [line.split("Init image hash: ")[1].split(",")[0] for line in res.info["infotexts"]]
    assert hashes[0] == hashes[2] != hashes[1] == hashes[3]
    url = f"{real.url}/sdapi/v1/img2img"
    three = [base64.b64encode(_png(heart())).decode()] * 3
    too_many = httpx.post(url, timeout=60, json={"prompt": "x", "init_images": three, "batch_size": 2})
    assert too_many.status_code == 400 and "3 init_images but batch_size is 2" in too_many.text
    assert "Set batch_size to 3" in too_many.text


def test_webuiapi_hires_fix_and_upscaler_lists(real):
    api = _api(real)
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent (bicubic)", "hr_second_pass_steps": 3}
    result = api.txt2img(prompt="red heart", width=64, height=64, denoising_strength=0.5, seed=1, **hires)
    assert result.image.size == (96, 96)
    assert "Hires upscaler: Latent (bicubic)" in result.info["infotexts"][0]
    names = [m["name"] for m in httpx.get(f"{real.url}/sdapi/v1/latent-upscale-modes").json()]
    assert "Latent" in names and "Latent (nearest-exact)" in names
    assert "Lanczos" in [u["name"] for u in httpx.get(f"{real.url}/sdapi/v1/upscalers").json()]
    too_big = httpx.post(f"{real.url}/sdapi/v1/txt2img", timeout=60, json={"prompt": "x", "width": 1024, "height": 1024,
                                                               "enable_hr": True, "hr_scale": 4})  # fmt: skip
    assert too_big.status_code == 400 and "largest hires scale" in too_big.text


def test_a1111_img2img_bad_inputs_are_clear_400s(real):
    url = f"{real.url}/sdapi/v1/img2img"
    bad = httpx.post(url, json={"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"]})
    assert bad.status_code == 400 and "not a PNG, JPEG or WebP" in bad.text
    buf = io.BytesIO()
    heart().save(buf, format="PNG")
    img = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    small = io.BytesIO()
    Image.new("L", (32, 32)).save(small, format="PNG")
    mask = base64.b64encode(small.getvalue()).decode()
    wrong = httpx.post(url, json={"prompt": "x", "init_images": [img], "mask": mask})
    assert wrong.status_code == 400 and "64x64" in wrong.text
    nan = httpx.post(url, content=b'{"prompt": "x", "init_images": ["%s"], "denoising_strength": NaN}' % img.encode(),
                     headers={"content-type": "application/json"})  # fmt: skip
    assert nan.status_code in (400, 422)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_openai_edit_with_mask_and_variation(real):
    oai = openai.OpenAI(base_url=real.url + "/v1", api_key="x", max_retries=0)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent = the area to edit
    res = oai.images.edit(image=("heart.png", _png(heart()), "image/png"), mask=("mask.png", _png(mask), "image/png"),
                          prompt="blue heart", n=2, size="64x64", response_format="b64_json",
                          extra_body={"seed": 5, "steps": 6, "mask_blur": 2})  # fmt: skip
    assert len(res.data) == 2
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json))).convert("RGB")).astype(int)
    orig = np.asarray(heart()).astype(int)
    assert first.shape == (64, 64, 3) and np.array_equal(first[:, 44:], orig[:, 44:])
    var = oai.images.create_variation(image=("heart.png", _png(heart()), "image/png"), n=1, size="64x64",
                                      response_format="b64_json")  # fmt: skip
    assert Image.open(io.BytesIO(base64.b64decode(var.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.BadRequestError, match="transparent"):
        oai.images.edit(image=("heart.png", _png(heart()), "image/png"), prompt="x",
                        mask=("mask.png", _png(Image.new("RGBA", (64, 64), (0, 0, 0, 255))), "image/png"))  # fmt: skip


def test_native_jobs_take_uploaded_or_inline_images(real):
    from live import wait_job

    with real.client() as c:
        up = c.post("/api/v1/uploads", files={"file": ("heart.png", _png(heart()), "image/png")})
        assert up.status_code == 201 and up.json()["id"].startswith("upload:") and up.json()["width"] == 64
        mask = "data:image/png;base64," + base64.b64encode(_png(left_half_mask())).decode()
        job = c.post("/api/v1/jobs", json={"prompt": "blue heart", "init_image": up.json()["id"], "mask": mask,
                                           "strength": 1.0, "mask_blur": 2, "steps": 6, "seed": 2})  # fmt: skip
        assert job.status_code == 202, job.text
        view = wait_job(c, job.json()["id"], timeout=300)
        assert view["status"] == "done"
        out = np.asarray(Image.open(io.BytesIO(c.get(view["images"][0]["url"]).content)).convert("RGB")).astype(int)
        assert np.array_equal(out[:, 44:], np.asarray(heart()).astype(int)[:, 44:])
        bomb = c.post("/api/v1/uploads", files={"file": ("x.bmp", b"BM" + b"\0" * 100, "image/bmp")})
        assert bomb.status_code == 400 and "PNG, JPEG or WebP" in bomb.text
        gone = c.post("/api/v1/jobs", json={"prompt": "x", "init_image": "upload:" + "0" * 32})
        assert gone.status_code == 404 and "Upload the image again" in gone.text


def test_a1111_img2img_fields_reach_the_core_request():
    from sdplay.server.schemas_a1111 import Img2ImgRequest

    one = base64.b64encode(_png(heart())).decode()
    two = base64.b64encode(_png(heart().transpose(Image.Transpose.FLIP_LEFT_RIGHT))).decode()
    body = Img2ImgRequest(prompt="x", init_images=[one, two], batch_size=3, n_iter=2,
                          refiner_checkpoint="sdxl-refiner.safetensors [abc123]", refiner_switch_at=0.7)  # fmt: skip
    req = body.to_request(None)
    assert (req.n_images, req.batch_size, len(req.init_images)) == (4, 2, 2)  # batch_size becomes the image count
    assert (req.refiner, req.refiner_switch_at) == ("sdxl-refiner", 0.7)
    assert Img2ImgRequest(prompt="x", init_images=[one], refiner_checkpoint="None").to_request(None).refiner is None
