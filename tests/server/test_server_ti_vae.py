"""Textual inversion, VAE choice and the checkpoints folder over the A1111 API: the real `webuiapi` client against
the real engine."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
import webuiapi
from live import live_server, wait_job
from safetensors.torch import save_file
from tiny import make_embedding, make_vae_file

from sdplay import catalog

EMOJI = catalog.builtin("sdplay-emoji").weights_dir
ARGS = {"seed": 1, "steps": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from sdplay.engine import Engine

    root = tmp_path_factory.mktemp("ti-vae")
    make_embedding(EMOJI, root / "embeddings" / "zqstyle.safetensors", scale=3.0)
    xl = {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}
    save_file(xl, str(root / "embeddings" / "xl.safetensors"))
    make_vae_file(EMOJI, root / "VAE" / "crisp.safetensors")
    engine = Engine(device="cpu", embeddings_dir=str(root / "embeddings"), vae_dir=str(root / "VAE"),
                    ckpt_dir=str(root / "Stable-diffusion"))  # fmt: skip
    with live_server(root, engine) as server:
        yield server, root


@pytest.fixture
def api(served):
    return webuiapi.WebUIApi(host="127.0.0.1", port=served[0].port)


def pixels(res):
    return np.asarray(res.images[0].convert("RGB")).astype(np.int16)


def test_webuiapi_lists_embeddings_and_a_name_in_the_prompt_uses_one(served, api):
    server, root = served
    listed = api.get_embeddings()
    assert listed["loaded"] == {"zqstyle": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                            "shape": 96, "vectors": 2}}  # fmt: skip
    assert listed["skipped"]["xl"]["shape"] == 768 + 1280
    plain = api.txt2img(prompt="red heart", **ARGS)
    styled = api.txt2img(prompt="red heart, (zqstyle:1.2)", **ARGS)
    again = api.txt2img(prompt="red heart", **ARGS)
    assert np.abs(pixels(styled) - pixels(plain)).mean() > 2.0
    assert np.array_equal(pixels(again), pixels(plain))
    assert 'TI hashes: "zqstyle: ' in styled.info["infotexts"][0] and "TI hashes" not in plain.info["infotexts"][0]
    make_embedding(EMOJI, root / "embeddings" / "sub" / "second.safetensors", seed=9)
    httpx.post(f"{server.url}/sdapi/v1/refresh-embeddings", timeout=30).raise_for_status()
    assert sorted(api.get_embeddings()["loaded"]) == ["second", "zqstyle"]
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "red heart xl", **ARGS}, timeout=60)
    assert r.status_code == 400 and "is for SDXL models" in r.json()["detail"]


def test_webuiapi_lists_vaes_and_override_settings_choose_one(served, api):
    server, root = served
    crisp = str(root / "VAE" / "crisp.safetensors")
    assert api.get_sd_vae() == [{"model_name": "crisp.safetensors", "filename": crisp}]
    plain = api.txt2img(prompt="red heart", **ARGS)
    chosen = api.txt2img(prompt="red heart", override_settings={"sd_vae": "crisp.safetensors"}, **ARGS)
    automatic = api.txt2img(prompt="red heart", override_settings={"sd_vae": "Automatic"}, **ARGS)
    assert np.abs(pixels(chosen) - pixels(plain)).mean() > 2.0
    assert np.array_equal(pixels(automatic), pixels(plain))
    assert chosen.info["sd_vae_name"] == "crisp.safetensors" and len(chosen.info["sd_vae_hash"]) == 10
    assert "VAE: crisp.safetensors" in chosen.info["infotexts"][0] and plain.info["sd_vae_name"] is None
    api.set_options({"sd_vae": "crisp"})  # saved options apply to later requests
    try:
        saved = api.txt2img(prompt="red heart", **ARGS)
        assert np.array_equal(pixels(saved), pixels(chosen))
        own = api.txt2img(prompt="red heart", override_settings={"sd_vae": "None"}, **ARGS)
        assert np.array_equal(pixels(own), pixels(plain))
    finally:
        api.set_options({"sd_vae": "Automatic"})
    make_vae_file(EMOJI, root / "VAE" / "soft.safetensors", seed=11)
    httpx.post(f"{server.url}/sdapi/v1/refresh-vae", timeout=30).raise_for_status()
    assert [v["model_name"] for v in api.get_sd_vae()] == ["crisp.safetensors", "soft.safetensors"]


def test_bad_vae_names_are_clear_400s(served):
    server, _ = served
    url = f"{server.url}/sdapi/v1"
    for name, says in (("crips.safetensors", "crisp.safetensors"), ("../crisp.safetensors", "names are file names"),
                       ("/etc/passwd", "names are file names"), (3, "sd_vae must be text")):  # fmt: skip
        body = {"prompt": "red heart", "override_settings": {"sd_vae": name}, **ARGS}
        r = httpx.post(f"{url}/txt2img", json=body, timeout=60)
        assert r.status_code == 400 and says in r.text, (name, r.text)
    r = httpx.post(f"{url}/options", json={"sd_vae": "crips"}, timeout=30)
    assert r.status_code == 400 and "Close ones: crisp.safetensors" in r.text
    assert httpx.get(f"{url}/options", timeout=30).json()["sd_vae"] == "Automatic"
    with server.client() as native:  # the native job API takes the same names
        r = native.post("/api/v1/jobs", json={"prompt": "red heart", "steps": 2, "vae": "crips"})
        assert r.status_code == 400 and "crisp.safetensors" in r.text
        r = native.post("/api/v1/jobs", json={"prompt": "red heart", "steps": 2, "vae": "crisp"})
        assert r.status_code == 202 and wait_job(native, r.json()["id"])["status"] == "done"


def test_refresh_checkpoints_lists_a_model_added_to_the_folder(served, api):
    import shutil

    server, root = served
    assert [m["model_name"] for m in api.get_sd_models()] == ["sdplay-emoji"]
    shutil.copytree(EMOJI, root / "Stable-diffusion" / "emoji-copy")
    api.refresh_checkpoints()
    assert [m["model_name"] for m in api.get_sd_models()] == ["sdplay-emoji", "emoji-copy"]
    args = {**ARGS, "width": 64, "height": 64, "sampler_name": "Euler", "cfg_scale": 4}
    copy = api.txt2img(prompt="red heart", override_settings={"sd_model_checkpoint": "emoji-copy"}, **args)
    own = api.txt2img(prompt="red heart", **args)
    assert copy.info["sd_model_name"] == "emoji-copy" and np.array_equal(pixels(copy), pixels(own))
    r = httpx.post(
        f"{server.url}/sdapi/v1/txt2img",
        timeout=60,
        json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "../emoji-copy"}, **ARGS},
    )
    assert r.status_code in (400, 404) and "emoji-copy" in r.text
