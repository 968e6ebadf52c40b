"""The OpenAI-compatible images API, driven by the real `openai` client."""

from __future__ import annotations

import base64
import time

import httpx
import openai
import pytest
from fake_engine import FakeEngine, colour
from live import live_server, pixel


@pytest.fixture
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_b64_json_with_sdplay_fields_in_extra_body(oai, server):
    res = oai.images.generate(
        prompt="a red heart",
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 7, "negative_prompt": "blue", "steps": 3, "guidance": 5.5, "sampler": "Euler a"},
    )
    assert len(res.data) == 2 and res.size == "64x64" and res.output_format == "png"
    for k, item in enumerate(res.data):
        assert pixel(base64.b64decode(item.b64_json)) == colour("a red heart", 7 + k)
    image = server.service.gallery.search("a red heart")[0][0]
    assert (image.steps, image.guidance, image.sampler, image.negative_prompt) == (3, 5.5, "Euler a", "blue")


def test_url_response_is_served_here_and_expires(oai, server):
    res = oai.images.generate(prompt="by link", response_format="url", output_format="jpeg", extra_body={"seed": 2})
    url = res.data[0].url
    assert url.startswith(server.url + "/v1/images/files/")
    got = httpx.get(url)
    assert got.headers["content-type"] == "image/jpeg" and got.content[:3] == b"\xff\xd8\xff"
    job_id, index, fmt = server.service.signer.verify(url.rsplit("/", 1)[1])
    old = server.service.signer.sign(job_id, index, fmt, now=time.time() - 10 * server.settings.url_ttl_s)
    expired = httpx.get(f"{server.url}/v1/images/files/{old}")
    assert expired.status_code == 410 and "expired" in expired.json()["error"]["message"]
    forged = url.rsplit(".", 1)[0] + "." + "0" * 32
    assert httpx.get(forged).status_code == 404


def test_output_formats(oai):
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        res = oai.images.generate(prompt="fmt", output_format=fmt, extra_body={"seed": 1})
        assert base64.b64decode(res.data[0].b64_json).startswith(magic) and res.output_format == fmt


def test_openai_model_names_mean_the_default_model(oai, server):
    oai.images.generate(prompt="dalle", model="dall-e-3", extra_body={"seed": 4})
    assert server.service.gallery.search("dalle")[0][0].model == "sdplay-emoji"
    assert [m.id for m in oai.models.list()] == ["sdplay-emoji", "sd-v1-4"]


def test_stream_with_partial_images(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.01)) as s:
        oai = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        stream = oai.images.generate(
            prompt="streamed", stream=True, partial_images=2, size="64x64", extra_body={"steps": 9, "seed": 11}
        )
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = events[-1]
    assert final.size == "64x64" and final.output_format == "png" and final.usage.total_tokens == 0
    assert pixel(base64.b64decode(final.b64_json)) == colour("streamed", 11)
    assert base64.b64decode(events[0].b64_json).startswith(b"\x89PNG")


def test_stream_reports_a_failure_as_an_error_event(oai):
    stream = oai.images.generate(prompt="boom [oom]", stream=True, partial_images=1)
    with pytest.raises(openai.APIError, match="Out of memory"):
        list(stream)


def test_errors_have_openai_shape(oai, server):
    with pytest.raises(openai.BadRequestError) as bad:
        oai.images.generate(prompt="x", size="banana")
    assert bad.value.body["param"] == "size" and "WIDTHxHEIGHT" in bad.value.body["message"]
    assert bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as many:
        oai.images.generate(prompt="x", n=11)
    assert many.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        oai.images.generate(prompt="x", model="no-such-model")
    assert missing.value.body["code"] == "model_not_found" and "sdplay-emoji" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        oai.images.generate(prompt="x", background="transparent")
    raw = httpx.post(server.url + "/v1/images/generations", json={"n": 1})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "prompt"


def test_bearer_auth_when_an_api_key_is_set(tmp_path):
    with live_server(tmp_path, api_key="s3cret") as s:
        wrong = openai.OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong.images.generate(prompt="x")
        assert denied.value.body["code"] == "invalid_api_key"
        right = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert len(right.images.generate(prompt="x").data) == 1
        assert httpx.get(s.url + "/api/v1/jobs").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200
