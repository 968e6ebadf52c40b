"""The browser UI with images in: upload an image, paint a mask with the brush, inpaint, send a result back."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.web, pytest.mark.server]


def disc(path):
    yy, xx = np.mgrid[:64, :64]
    arr = np.full((64, 64, 3), 255, np.uint8)
    arr[(yy - 32) ** 2 + (xx - 32) ** 2 < 22**2] = (230, 40, 40)
    Image.fromarray(arr).save(path)
    return arr


def test_paint_a_mask_and_inpaint(page, server, tmp_path, shots):
    from playwright.sync_api import expect

    original = disc(tmp_path / "disc.png")
    page.goto("/")
    page.wait_for_selector("body[data-ready]")
    page.click("#image-panel summary")
    page.set_input_files("#init-file", str(tmp_path / "disc.png"))
    expect(page.locator("#init-editor")).to_be_visible()
    expect(page.locator("#init-size")).to_have_text("64×64")
    page.fill("#prompt", "blue heart")
    page.fill("#steps", "6")
    page.fill("#seed", "3")
    page.fill("#mask-blur", "2")
    page.locator("#brush-size").fill("64")
    box = page.locator("#mask-canvas").bounding_box()
    # paint the left quarter top to bottom: the canvas is shown larger than the image, the brush scales with it
    x = box["x"] + box["width"] * 0.12
    page.mouse.move(x, box["y"] + 2)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x, box["y"] + box["height"] * k / 10 - 2)
    page.mouse.up()
    page.locator("#strength").fill("1")
    shots(page, "inpaint-mask")
    page.click("#generate")
    try:
        expect(page.locator("#results .result")).to_have_count(1, timeout=400_000)
    except AssertionError:
        state = page.evaluate("() => [document.querySelector('#progress-text').textContent, "
                              "document.querySelector('#gen-form .form-error').textContent]")  # fmt: skip
        raise AssertionError(f"no result; progress and form error: {state}") from None
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job = client.get("/api/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        assert job["status"] == "done" and job["request"]["init_image"]["width"] == 64
        assert job["request"]["mask"] is not None and job["request"]["strength"] == 1.0
        png = client.get(job["images"][0]["url"]).content
    out = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert np.array_equal(out[:, 40:], original[:, 40:].astype(int))  # unpainted side: the original pixels
    assert np.abs(out[:, :10] - original[:, :10]).mean() > 2  # the painted side was repainted
    shots(page, "inpaint-result")

    # the result goes back in as the next init image; the mask starts empty; invert and clear work
    page.locator("#results .result .thumb").first.click()
    page.get_by_role("button", name="Send to img2img").click()
    page.keyboard.press("Escape")
    expect(page.locator("#init-size")).to_have_text("64×64")
    painted = "() => { const c = document.getElementById('mask-canvas'); const d = c.getContext('2d')" \
              ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) " \
              "n += d[i] > 0; return n; }"  # fmt: skip
    assert page.evaluate(painted) == 0
    page.click("#mask-invert")
    assert page.evaluate(painted) == 64 * 64
    page.click("#mask-clear")
    assert page.evaluate(painted) == 0
