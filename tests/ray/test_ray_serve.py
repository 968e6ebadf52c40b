"""sdplay on a local Ray cluster: two CPU engine replicas behind the real HTTP APIs, and a replica killed mid-job."""

from __future__ import annotations

import base64
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
from live import wait_job
from tiny import make_kohya_lora, make_tiny_folder

from sdplay import catalog
from sdplay.images import read_png_info

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(180)]

READY_S = 90  # two replicas importing torch and loading the model on two cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(tmp: Path) -> tuple[str, Path]:
    """The embedded model when its weights ship with sdplay, else a tiny random SD1 folder; (name, its folder)."""
    emoji = catalog.builtin("sdplay-emoji")
    if emoji and emoji.weights_dir and (emoji.weights_dir / "model_index.json").is_file():
        return emoji.name, emoji.weights_dir
    folder = make_tiny_folder("sd1", tmp / "tiny-sd1")
    return str(folder), folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[dict]:
    """A local Ray cluster (3 logical CPUs) serving sdplay with 2 fixed CPU replicas; always shut down.

    Each replica keeps one model: both load `model` at start; `other` is offered but loaded on demand.
    """
    from ray import serve

    from sdplay.server.scaleout.app import deploy
    from sdplay.server.scaleout.options import RayOptions
    from sdplay.server.settings import Settings

    tmp = tmp_path_factory.mktemp("ray")
    model, folder = _model(tmp)
    make_kohya_lora(folder, tmp / "loras" / "ink.safetensors")  # the replicas find it through --lora-dir
    other = str(make_tiny_folder("sd1", tmp / "tiny-other", seed=1))  # in the catalog, loaded by no replica
    env = {"HF_HUB_OFFLINE": "1", "SDPLAY_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=3, num_gpus=0, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env},
             object_store_memory=256 * 2**20)  # fmt: skip
    try:
        port = _free_port()
        # load options as `sdplay serve --ray --attention-slicing --vae-tiling --lora-dir DIR` gives them
        settings = Settings(port=port, output_dir=tmp / "out", gallery_db=tmp / "gallery.sqlite3",
                            default_model=model, models_preload=(model, other), max_batch=2,
                            batch_window_ms=0.0, attention_slicing=True, vae_tiling=True,
                            lora_dir=tmp / "loras")  # fmt: skip
        options = RayOptions(replicas=2, num_cpus=1, max_ongoing_requests=2, models_per_replica=1,
                             start_timeout_s=60)  # fmt: skip
        deploy(settings, options)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        yield {"url": url, "model": model, "other": other, "out": tmp / "out"}
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the Ray application did not become healthy")


@pytest.fixture
def client(cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster["url"], timeout=30) as c:
        yield c


def serving(client: httpx.Client, view: dict) -> list[dict]:
    """Where each image of a finished job was made, read from the sdplay metadata in its PNG."""
    return [read_png_info(client.get(im["url"]).content)["sdplay"]["serving"] for im in view["images"]]


def running_on(client: httpx.Client, prompt: str, attempt: int, timeout: float = 30) -> str:
    """The replica running the call for `prompt` in its `attempt`, once it has done a few steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for call in client.get("/api/v1/cluster").json()["running"]:
            if prompt in call["prompts"] and call["attempt"] == attempt and call["replica"]:
                return call["replica"]
        time.sleep(0.02)
    raise AssertionError(f"no replica ran {prompt!r} (attempt {attempt})")


def kill_replica(replica: str) -> None:
    """Kill an engine replica's actor as a crash would (no restart of that actor; Serve starts a new one)."""
    from sdplay.server.scaleout.options import APP_NAME, ENGINE_DEPLOYMENT

    actor = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{ENGINE_DEPLOYMENT}#{replica}", namespace="serve")
    ray.kill(actor, no_restart=True)


def wait_step(client: httpx.Client, job_id: str, step: int) -> None:
    deadline = time.monotonic() + 30
    while client.get(f"/api/v1/jobs/{job_id}").json()["step"] < step:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.02)


def test_requests_through_http_spread_over_both_replicas(cluster, client):
    import openai

    jobs = [client.post("/api/v1/jobs", json={"prompt": f"spread {i}", "seed": i, "steps": 30, "n_images": 1})
            for i in range(8)]  # fmt: skip
    oai = openai.OpenAI(base_url=cluster["url"] + "/v1", api_key="unused", max_retries=0, timeout=60)
    res = oai.images.generate(prompt="via openai", n=2, size="64x64", response_format="b64_json",
                              extra_body={"seed": 5, "steps": 8})  # fmt: skip
    assert [read_png_info(base64.b64decode(d.b64_json))["size"] for d in res.data] == [(64, 64), (64, 64)]
    replicas = []
    for r in jobs:
        assert r.status_code == 202, r.text
        view = wait_job(client, r.json()["id"])
        assert view["status"] == "done" and len(view["images"]) == 1, view
        where = serving(client, view)
        assert where[0]["backend"] == "ray" and where[0]["attempt"] == 1
        replicas.append(where[0]["replica"])
    assert len(set(replicas)) == 2, f"one replica served everything: {replicas}"
    assert client.get("/api/v1/system").json()["workers"] == ["ray-0", "ray-1", "ray-2", "ray-3"]  # 2 x 2 slots
    served = client.get("/api/v1/cluster").json()["served"]
    assert set(served) == set(replicas) and sum(served.values()) >= 5  # 8 jobs (some batched in pairs) + 1


def made_on(client: httpx.Client, model: str) -> str:
    """Run one short job on `model` alone; the replica that made it."""
    job = client.post("/api/v1/jobs", json={"prompt": "route me", "model": model, "steps": 4}).json()
    view = wait_job(client, job["id"])
    assert view["status"] == "done", view
    return serving(client, view)[0]["replica"]


def test_requests_go_to_the_replica_that_holds_their_model(cluster, client):
    loader = made_on(client, cluster["other"])  # that replica swaps its model for `other`
    time.sleep(1.5)  # replicas report the models they hold to the routers every 0.1 s
    assert [made_on(client, cluster["other"]) for _ in range(4)] == [loader] * 4
    holders = {made_on(client, cluster["model"]) for _ in range(4)}
    assert len(holders) == 1 and loader not in holders  # only the other replica still holds `model`


def test_progress_and_previews_stream_back(cluster, client):
    job = client.post("/api/v1/jobs", json={"prompt": "streamed", "steps": 12, "seed": 3}).json()
    names, steps = [], []
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
                names.append(event)
                if event in ("done", "failed", "cancelled"):
                    break
            elif line.startswith("data:") and event == "progress":
                steps.append(json.loads(line[5:])["step"])
    assert names[-1] == "done" and "preview" in names, names
    assert steps == sorted(steps) and steps[-1] == 12 and len(steps) >= 6


def test_cancel_stops_the_replica_between_steps(cluster, client):
    job = client.post("/api/v1/jobs", json={"prompt": "to cancel", "steps": 150, "width": 128, "height": 128}).json()
    wait_step(client, job["id"], 3)
    client.post(f"/api/v1/jobs/{job['id']}/cancel")
    view = wait_job(client, job["id"], timeout=20)
    assert view["status"] == "cancelled" and view["step"] < 150 and view["images"] == []


def test_killed_replica_job_completes_once_on_the_other(cluster, client):
    body = {"prompt": "victim", "steps": 150, "n_images": 2, "seed": 11}  # long enough to kill it mid-way
    job = client.post("/api/v1/jobs", json=body).json()
    first = running_on(client, "victim", attempt=1)
    wait_step(client, job["id"], 5)
    retries = client.get("/api/v1/cluster").json()["retries"]
    kill_replica(first)
    view = wait_job(client, job["id"], timeout=120)  # the retry starts over, on a machine running other tests
    assert view["status"] == "done", view
    assert [im["seed"] for im in view["images"]] == [11, 12]
    where = serving(client, view)
    assert {w["replica"] for w in where} != {first} and {w["attempt"] for w in where} == {2}
    assert client.get("/api/v1/cluster").json()["retries"] == retries + 1
    files = sorted((cluster["out"] / job["id"]).glob("*.png"))
    assert len(files) == 2, files  # completed once: no image of a second completion anywhere
    page = client.get("/api/v1/gallery", params={"q": "victim"}).json()
    assert sorted(item["seed"] for item in page["items"]) == [11, 12]


def test_job_is_reported_failed_when_its_retry_dies_too(cluster, client):
    body = {"prompt": "unlucky", "steps": 150, "seed": 1}
    job = client.post("/api/v1/jobs", json=body).json()
    kill_replica(running_on(client, "unlucky", attempt=1))
    kill_replica(running_on(client, "unlucky", attempt=2, timeout=60))
    view = wait_job(client, job["id"])
    assert view["status"] == "failed" and view["images"] == [], view
    assert "died" in view["error"]["message"] and view["error"]["hint"]
    assert not (cluster["out"] / job["id"]).exists() or not list((cluster["out"] / job["id"]).glob("*.png"))


def test_replicas_load_models_with_the_servers_load_options_and_loras(cluster, client):
    assert [lo["name"] for lo in client.get("/sdapi/v1/loras").json()] == ["ink"]
    made = {}
    for prompt in ("inked", "inked <lora:ink:1>"):
        job = client.post("/api/v1/jobs", json={"prompt": prompt, "steps": 4, "seed": 21}).json()
        view = wait_job(client, job["id"])
        assert view["status"] == "done", view
        png = client.get(view["images"][0]["url"]).content
        made[prompt] = (read_png_info(png)["sdplay"], png)
    plain, inked = made["inked"][0], made["inked <lora:ink:1>"][0]
    for info in (plain, inked):  # what the replica's engine chose while loading the model
        assert info["optimisation"]["attention_slicing"] and info["optimisation"]["vae_tiling"], info["optimisation"]
    assert plain["loras"] == [] and [lo["name"] for lo in inked["loras"]] == ["ink"]
    assert made["inked"][1] != made["inked <lora:ink:1>"][1]
    bad = client.post("/api/v1/jobs", json={"prompt": "x <lora:inc:1>"})
    assert bad.status_code == 400 and "ink" in bad.text, bad.text
