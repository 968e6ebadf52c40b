"""LoRA and clip skip over the A1111 API: the real `webuiapi` client against the real engine (embedded model)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import webuiapi
from live import live_server
from tiny import make_kohya_lora

from sdplay import catalog


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from sdplay.engine import Engine

    root = tmp_path_factory.mktemp("adapters")
    loras = root / "Lora"
    make_kohya_lora(catalog.builtin("sdplay-emoji").weights_dir, loras / "inkwash.safetensors", scale=0.3)
    with live_server(root, Engine(device="cpu", lora_dir=str(loras)), lora_dir=loras) as s:
        yield s, loras


def pixels(res):
    return np.asarray(res.images[0].convert("RGB")).astype(np.int16)


def test_webuiapi_lists_and_applies_a_lora(served):
    server, loras = served
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    assert [x["name"] for x in api.get_loras()] == ["inkwash"]
    make_kohya_lora(catalog.builtin("sdplay-emoji").weights_dir, loras / "second.safetensors", seed=5)
    httpx.post(f"{server.url}/sdapi/v1/refresh-loras", timeout=30).raise_for_status()
    assert [x["name"] for x in api.get_loras()] == ["inkwash", "second"]
    args = {"seed": 1, "steps": 2, "width": 64, "height": 64}  # webuiapi asks 512x512 unless told
    plain = api.txt2img(prompt="red heart", **args)
    styled = api.txt2img(prompt="red heart <lora:inkwash:1>", **args)
    again = api.txt2img(prompt="red heart", **args)
    assert np.abs(pixels(styled) - pixels(plain)).mean() > 2.0
    assert np.array_equal(pixels(again), pixels(plain))
    assert "Lora hashes: " in styled.info["infotexts"][0] and "<lora:inkwash:1>" in styled.info["prompt"]
    skipped = api.txt2img(prompt="red heart", override_settings={"CLIP_stop_at_last_layers": 2}, **args)
    assert skipped.info["clip_skip"] == 2 and "Clip skip: 2" in skipped.info["infotexts"][0]
    assert not np.array_equal(pixels(skipped), pixels(plain))


def test_unknown_lora_is_a_clear_400(served):
    server, _ = served
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "x <lora:inkwosh:1>", "steps": 2}, timeout=60)
    assert r.status_code == 400 and "inkwash" in r.text


def test_webuiapi_sees_a_lora_trained_by_sdplay_with_its_metadata_and_its_effect(zorbo_lora, tmp_path):
    from zorbo import distance

    from sdplay.engine import Engine

    file, images = zorbo_lora
    with live_server(tmp_path, Engine(device="cpu", lora_dir=str(file.parent)), lora_dir=file.parent) as server:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
        [entry] = api.get_loras()
        assert (entry["name"], entry["alias"], entry["path"]) == ("zorbo", "zorbo", str(file))
        meta = entry["metadata"]
        assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_base_model_version"]) == ("4", "4", "sd_v1")
        assert meta["ss_sd_model_name"] == "sdplay-emoji" and meta["ss_tag_frequency"] == {"images": {"zorbo": 6}}
        args = {"seed": 0, "steps": 10, "batch_size": 2, "width": 64, "height": 64}
        plain = api.txt2img(prompt="zorbo", **args)
        learned = api.txt2img(prompt="zorbo <lora:zorbo:1>", **args)
        assert "Lora hashes: " in learned.info["infotexts"][0]
        assert distance(learned.images, images) < 0.5 * distance(plain.images, images)
