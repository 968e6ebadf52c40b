"""What real clients call when they connect: A1111's start-up endpoints through `webuiapi`, OpenAI's model
lookup and its documented `response_format` defaults through `openai`."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
import webuiapi
from fake_engine import FakeEngine
from live import live_server, sse_events
from PIL import Image


def test_webuiapi_start_up_calls(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    flags = api.get_cmd_flags()
    assert flags["api"] is True and flags["port"] == server.port and flags["listen"] is False
    assert flags["api_auth"] is None and "api_key" not in flags  # never a secret
    assert api.get_face_restorers() == [] and api.get_hypernetworks() == [] and api.get_realesrgan_models() == []
    assert api.get_sd_vae() == [] and api.get_prompt_styles() == []
    assert "Lanczos" in {u["name"] for u in api.get_upscalers()}  # the pixel upscalers of the hires fix
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}} and api.get_loras() == []
    api.refresh_checkpoints()
    assert "sdplay-emoji" in api.util_get_model_names()
    assert api.util_get_current_model() == "sdplay-emoji"
    assert "DPM++ 2M" in api.util_get_sampler_names() and api.util_get_scheduler_names()
    assert set(api.get_memory()) == {"ram", "cuda"}
    api.util_wait_for_ready(check_interval=0.1)


def test_the_other_a1111_start_up_endpoints(server):
    with server.client() as c:
        assert c.get("/internal/ping").json() == {}
        assert c.post("/sdapi/v1/unload-checkpoint").status_code == 200
        assert c.post("/sdapi/v1/reload-checkpoint").status_code == 200
        assert c.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        assert c.get("/sdapi/v1/refresh-checkpoints").status_code == 405


def test_the_start_up_endpoints_keep_their_auth(tmp_path):
    with live_server(tmp_path, api_auth="alice:wonder") as s:
        assert httpx.get(s.url + "/sdapi/v1/cmd-flags").status_code == 401
        api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port, username="alice", password="wonder")
        assert api.get_cmd_flags()["api"] is True and api.get_face_restorers() == []
        assert httpx.get(s.url + "/internal/ping").status_code == 200  # a liveness probe, open as in A1111


def test_openai_model_lookup(server):
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    assert oai.models.retrieve("sdplay-emoji").id == "sdplay-emoji"
    assert oai.models.retrieve("emoji").id == "sdplay-emoji"  # aliases resolve
    assert oai.models.retrieve("dall-e-3").id == "dall-e-3"  # OpenAI names stand for the default model
    for missing in ("no-such-model", "sdxl-base-1.0"):  # unknown, and known but not on this server
        with pytest.raises(openai.NotFoundError) as err:
            oai.models.retrieve(missing)
        assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, "url"),  # no model means dall-e-2
        ({"model": "dall-e-2"}, "url"),
        ({"model": "dall-e-3"}, "url"),
        ({"model": "gpt-image-1"}, "b64_json"),
        ({"model": "gpt-image-1-mini"}, "b64_json"),
        ({"output_format": "png"}, "b64_json"),  # a GPT-image-only field: gpt-image-1
        ({"model": "sdplay-emoji"}, "b64_json"),  # sdplay's own models: the image comes with the answer
        ({"model": "dall-e-3", "response_format": "b64_json"}, "b64_json"),
        ({"model": "gpt-image-1", "response_format": "url"}, "url"),
    ],
)
def test_response_format_defaults_as_openai_documents(server, fields, expected):
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    item = oai.images.generate(prompt="fmt", extra_body={"steps": 1}, **fields).data[0]
    assert (item.url is not None, item.b64_json is not None) == (expected == "url", expected == "b64_json")
    if item.url:
        assert httpx.get(item.url).content.startswith(b"\x89PNG")


@pytest.mark.parametrize("size", ["64x64", "128x64"])
def test_streamed_partial_images_have_the_size_asked_for(tmp_path, size):
    with live_server(tmp_path, FakeEngine(step_delay=0.01)) as s:
        body = {"prompt": "p", "stream": True, "partial_images": 2, "size": size, "steps": 8, "model": "gpt-image-1"}
        with httpx.stream("POST", s.url + "/v1/images/generations", json=body, timeout=30) as r:
            events = list(sse_events(r))
    partials = [data for name, data in events if name == "image_generation.partial_image"]
    assert len(partials) == 2
    for data in partials:
        with Image.open(io.BytesIO(base64.b64decode(data["b64_json"]))) as img:
            assert f"{img.width}x{img.height}" == size == data["size"]


def test_a_preview_larger_than_the_image_is_sent_at_the_image_size():
    from sdplay.server.routes_openai import _convert

    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (9, 9, 9)).save(buf, format="PNG")  # the embedded model's latents preview at 2x
    for fmt in ("png", "jpeg", "webp"):
        with Image.open(io.BytesIO(base64.b64decode(_convert(buf.getvalue(), fmt, (64, 64))))) as img:
            assert img.size == (64, 64) and img.format == fmt.upper()
