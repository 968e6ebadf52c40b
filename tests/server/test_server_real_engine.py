"""End to end against the real sdplay.engine.Engine on the embedded model sdplay-emoji."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from live import live_server, wait_job
from PIL import Image

from sdplay import catalog

EMOJI = catalog.builtin("sdplay-emoji")
pytestmark = pytest.mark.skipif(
    EMOJI is None or EMOJI.weights_dir is None or not (EMOJI.weights_dir / "model_index.json").is_file(),
    reason="the sdplay-emoji weights are not committed yet (src/sdplay/assets/sdplay-emoji/model_index.json)",
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from sdplay.engine import Engine

    with live_server(tmp_path_factory.mktemp("real"), Engine(), batch_window_ms=50, max_batch=4) as s:
        yield s


def test_openai_a1111_and_native_on_the_real_engine(real):
    oai = openai.OpenAI(base_url=real.url + "/v1", api_key="x", max_retries=0)
    res = oai.images.generate(prompt="red heart", model="sdplay-emoji", extra_body={"seed": 1, "steps": 4})
    image = Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json)))
    assert image.size == (64, 64)
    a1111 = httpx.post(f"{real.url}/sdapi/v1/txt2img", json={"prompt": "red heart", "seed": 1, "steps": 4}, timeout=300)
    assert a1111.status_code == 200 and '"all_seeds": [1]' in a1111.json()["info"]
    with real.client() as c:
        job = c.post("/api/v1/jobs", json={"prompt": "red heart", "seed": 1, "steps": 4}).json()
        view = wait_job(c, job["id"], timeout=300)
        assert view["status"] == "done" and view["images"][0]["seed"] == 1
        png = c.get(view["images"][0]["url"]).content
    # the same request through three APIs gives the same pixels
    pixels = {Image.open(io.BytesIO(data)).convert("RGB").tobytes() for data in (
        base64.b64decode(res.data[0].b64_json), base64.b64decode(a1111.json()["images"][0]), png)}  # fmt: skip
    assert len(pixels) == 1
