"""The A1111-compatible API, driven by the real `webuiapi` client."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import pytest
import webuiapi
from fake_engine import FakeEngine, colour
from live import live_server

from sdplay.samplers import combine_sampler


@pytest.fixture
def api(server) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def test_txt2img_returns_images_parameters_and_info(api, server):
    res = api.txt2img(prompt="green leaf", negative_prompt="red", seed=100, batch_size=2, n_iter=2, steps=3,
                      cfg_scale=6.0, width=64, height=64, sampler_name="DPM++ 2M", scheduler="Karras")  # fmt: skip
    assert len(res.images) == 4
    assert [im.getpixel((5, 5)) for im in res.images] == [colour("green leaf", 100 + k) for k in range(4)]
    info = res.info
    assert info["seed"] == 100 and info["all_seeds"] == [100, 101, 102, 103]
    assert info["sampler_name"] == "DPM++ 2M" and info["scheduler"] == "Karras" and info["cfg_scale"] == 6.0
    assert len(info["infotexts"]) == 4 and "Seed: 102" in info["infotexts"][2]
    assert info["infotexts"][0].startswith("green leaf\nNegative prompt: red\nSteps: 3, Sampler: DPM++ 2M")
    assert res.parameters["prompt"] == "green leaf" and res.parameters["batch_size"] == 2
    assert server.service.gallery.search("green leaf")[0][0].sampler == "DPM++ 2M Karras"


def test_sampler_names_combined_or_split():
    assert combine_sampler("DPM++ 2M Karras", None) == "DPM++ 2M Karras"
    assert combine_sampler("DPM++ 2M", "Karras") == "DPM++ 2M Karras"
    assert combine_sampler("DPM++ 2M", "Automatic") == "DPM++ 2M Karras"  # A1111 1.9's default for DPM++ 2M
    assert combine_sampler("Euler a", "automatic") == "Euler a"
    assert combine_sampler("DPM++ 2M Karras", "Uniform") == "DPM++ 2M"
    assert combine_sampler("DPM++ 2M", None) == "DPM++ 2M"


def test_webuiapi_defaults_and_combined_names_run(api, server):
    api.txt2img(prompt="defaults", seed=1, steps=2, width=64, height=64)  # webuiapi sends "Euler a" + "automatic"
    api.txt2img(prompt="combined", seed=1, steps=2, width=64, height=64, sampler_name="DPM++ SDE Karras", scheduler="")
    samplers = {image.prompt: image.sampler for image in server.service.gallery.search()[0]}
    assert samplers == {"defaults": "Euler a", "combined": "DPM++ SDE Karras"}


def test_set_model_switches_the_checkpoint(api, server):
    assert "sd-v1-4" in api.util_get_model_names()
    api.util_set_model("sd-v1-4")
    assert api.get_options()["sd_model_checkpoint"] == "sd-v1-4"
    res = api.txt2img(prompt="switched", seed=3, steps=2)
    assert res.info["sd_model_name"] == "sd-v1-4"
    api.set_options({"sd_model_checkpoint": "sdplay-emoji.safetensors [0123abcd]"})
    assert api.txt2img(prompt="back", seed=3, steps=2).info["sd_model_name"] == "sdplay-emoji"
    override = api.txt2img(prompt="o", seed=3, steps=2, override_settings={"sd_model_checkpoint": "sd-v1-4"})
    assert override.info["sd_model_name"] == "sd-v1-4"
    r = httpx.post(f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert r.status_code == 404 and "not found" in r.json()["detail"] and "sdplay-emoji" in r.json()["detail"]


def test_progress_has_preview_eta_and_state_while_running(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.03), preview_interval_s=0.0) as s:
        api = webuiapi.WebUIApi(port=s.port)
        idle = api.get_progress()
        assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
        done = threading.Event()
        thread = threading.Thread(target=lambda: (api.txt2img(prompt="watch me", steps=40, seed=5), done.set()))
        thread.start()
        seen, deadline = api.get_progress(), time.monotonic() + 10
        while (not seen["current_image"] or seen["state"]["sampling_step"] < 3) and time.monotonic() < deadline:
            seen = api.get_progress()
        assert seen["state"]["sampling_steps"] == 40 and seen["state"]["job_count"] == 1
        assert 0 < seen["progress"] < 1 and seen["eta_relative"] > 0
        assert base64.b64decode(seen["current_image"]).startswith(b"\x89PNG")
        api.interrupt()
        thread.join(10)
        assert done.is_set() and api.get_progress()["state"]["job_count"] == 0


def test_interrupt_returns_an_empty_result(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.02)) as s:
        api = webuiapi.WebUIApi(port=s.port)
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=api.txt2img(prompt="stop", steps=100)))
        thread.start()
        deadline = time.monotonic() + 10
        while api.get_progress()["state"]["sampling_step"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        api.skip()
        thread.join(10)
        assert result["r"].images == [] and result["r"].info["interrupted"] is True


def test_listing_endpoints(api):
    assert {"DPM++ 2M", "DPM++ 2M Karras"} <= {s["name"] for s in api.get_samplers()}
    karras = next(s for s in api.get_samplers() if s["name"] == "DPM++ 2M Karras")
    assert karras["options"] == {"scheduler": "karras"}
    assert [s["label"] for s in api.get_schedulers()] == ["Automatic", "Uniform", "Karras"]
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    memory = api.get_memory()
    assert memory["ram"]["total"] > 0 and "error" in memory["cuda"]
    assert [m["title"] for m in api.get_sd_models()] == ["sdplay-emoji", "sd-v1-4"]


def test_png_info_reads_back_the_parameters(api):
    raw = api.txt2img(prompt="read me back", seed=77, steps=2, cfg_scale=3.0, width=64, height=64).json["images"][0]
    info = httpx.post(f"{api.baseurl}/png-info", json={"image": "data:image/png;base64," + raw}).json()
    assert info["info"].startswith("read me back\n") and info["parameters"]["Seed"] == "77"
    assert info["parameters"]["Prompt"] == "read me back" and info["parameters"]["Size-1"] == "64"
    assert info["parameters"]["CFG scale"] == "3"
    assert httpx.post(f"{api.baseurl}/png-info", json={"image": "bm90IGFuIGltYWdl"}).status_code == 400
    assert httpx.post(f"{api.baseurl}/png-info", json={"image": "\u00e5"}).status_code == 400  # found by fuzzing


def test_bad_requests_have_a1111_shape(server):
    cases = [
        ({"prompt": "x", "enable_hr": True, "hr_upscaler": "ESRGAN_4x"}, 400, "Unknown hires upscaler"),
        ({"prompt": "x", "script_name": "x/y/z plot"}, 400, "not found"),
        ({"prompt": "x", "sampler_name": "Nope"}, 400, "Choose one of"),
        ({"prompt": "x", "steps": 0}, 400, "steps"),
        ({"prompt": "x", "batch_size": 8, "n_iter": 8}, 400, "batch_size x n_iter"),
    ]
    for body, status, words in cases:
        r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()) == {"error", "detail", "body", "errors"} and words in r.json()["detail"]


def test_basic_auth(tmp_path):
    with live_server(tmp_path, api_auth="alice:wonder") as s:
        assert httpx.get(f"{s.url}/sdapi/v1/sd-models").status_code == 401
        assert (
            httpx.get(f"{s.url}/sdapi/v1/sd-models", auth=("alice", "wrong"))
            .headers["www-authenticate"]
            .startswith("Basic")
        )
        api = webuiapi.WebUIApi(port=s.port, username="alice", password="wonder")
        assert api.txt2img(prompt="authorised", seed=1, steps=2).image.getpixel((1, 1)) == colour("authorised", 1)
