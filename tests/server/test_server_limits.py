"""Limits and safety: binding, body size, queue bound, CORS, metrics, concurrency, failure isolation."""

from __future__ import annotations

import base64
import threading

import httpx
import openai
import pytest
from fake_engine import FakeEngine, colour
from live import live_server, pixel, wait_job

from sdplay.cli.main import main
from sdplay.server.settings import Settings


def test_refuses_a_public_address_without_an_api_key(capsys, monkeypatch):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err
    monkeypatch.setenv("SDPLAY_HOST", "192.0.2.1")
    assert main(["serve"]) == 2
    assert "--api-key" in capsys.readouterr().err
    assert main(["serve", "--api-auth", "nocolon"]) == 2


def test_settings_from_env_and_flags(monkeypatch):
    env = {"SDPLAY_MAX_QUEUE": "3", "SDPLAY_CORS_ORIGIN": "http://a, http://b", "SDPLAY_RANDOM_WEIGHTS": "yes",
           "SDPLAY_DEVICE": "cpu", "SDPLAY_BATCH_WINDOW_MS": "12.5", "SDPLAY_PORT": "9000"}  # fmt: skip
    s = Settings.from_env(env, port=9100)
    assert (s.max_queue, s.cors_origins, s.random_weights, s.devices) == (3, ("http://a", "http://b"), True, ("cpu",))
    assert (s.batch_window_ms, s.port, s.host) == (12.5, 9100, "127.0.0.1")
    with pytest.raises(Exception, match="SDPLAY_MAX_QUEUE"):
        Settings.from_env({"SDPLAY_MAX_QUEUE": "lots"})
    assert Settings(host="::1").check() and Settings(host="0.0.0.0", api_key="k").check()


def test_body_size_limit(tmp_path):
    with live_server(tmp_path, max_body_bytes=1000) as s, s.client() as c:
        big = {"prompt": "x" * 2000}
        r = c.post("/api/v1/jobs", json=big)
        assert r.status_code == 413 and "1,000 bytes" in r.json()["error"]["message"]
        assert c.post("/v1/images/generations", json=big).json()["error"]["type"] == "invalid_request_error"
        assert "detail" in c.post("/sdapi/v1/txt2img", json=big).json()

        def chunks():
            yield b'{"prompt": "'
            for _ in range(20):
                yield b"y" * 100
            yield b'"}'

        chunked = c.post("/api/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert s.engine.calls == []


def test_full_queue_answers_429_with_retry_after(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.05), max_queue=2) as s, s.client() as c:
        first = c.post("/api/v1/jobs", json={"prompt": "busy", "steps": 100}).json()["id"]
        while c.get(f"/api/v1/jobs/{first}").json()["status"] != "running":
            pass
        queued = [c.post("/api/v1/jobs", json={"prompt": f"q{i}"}) for i in range(2)]
        assert [r.status_code for r in queued] == [202, 202]
        full = c.post("/api/v1/jobs", json={"prompt": "one too many"})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert "queue is full" in full.json()["error"]["message"]
        oai = c.post("/v1/images/generations", json={"prompt": "x"})
        assert oai.status_code == 429 and oai.json()["error"]["code"] == "rate_limit_exceeded"
        assert "sdplay_jobs_rejected_total 2.0" in c.get("/metrics").text
        c.post(f"/api/v1/jobs/{first}/cancel")


def test_cors_is_off_unless_configured(tmp_path):
    headers = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    with live_server(tmp_path) as s, s.client() as c:
        assert "access-control-allow-origin" not in c.options("/api/v1/jobs", headers=headers).headers
    with live_server(tmp_path, cors_origins=("http://ui.example",)) as s, s.client() as c:
        ok = c.options("/api/v1/jobs", headers={**headers, "Origin": "http://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "http://ui.example"
        assert "access-control-allow-origin" not in c.options("/api/v1/jobs", headers=headers).headers


def test_request_fields_are_never_paths(client):
    assert client.post("/api/v1/jobs", json={"prompt": "x", "model": "/etc"}).status_code == 404
    assert client.post("/api/v1/jobs", json={"prompt": "x", "model": "../../sdplay-emoji"}).status_code == 404
    assert client.get("/api/v1/gallery/..%2F..%2Fetc%2Fpasswd/image").status_code in (400, 404)
    assert client.get("/v1/images/files/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_health_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok", "queue_depth": 0, "workers_alive": 1}
    job = client.post("/api/v1/jobs", json={"prompt": "count me", "n_images": 3}).json()["id"]
    wait_job(client, job)
    text = client.get("/metrics").text
    assert 'sdplay_images_generated_total{model="sdplay-emoji"} 3.0' in text
    assert 'sdplay_job_latency_seconds_count{api="native",status="done"} 1.0' in text
    assert "sdplay_queue_depth 0.0" in text


def test_one_failing_job_harms_no_other(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.02), batch_window_ms=300, max_batch=8) as s, s.client() as c:
        blocker = c.post("/api/v1/jobs", json={"prompt": "first", "steps": 10}).json()["id"]
        ids = [c.post("/api/v1/jobs", json={"prompt": p, "seed": 1}).json()["id"] for p in ("ok 1", "[crash]", "ok 2")]
        views = [wait_job(c, i) for i in [blocker, *ids]]
        assert [v["status"] for v in views] == ["done", "done", "failed", "done"]
        assert views[2]["error"]["type"] == "InternalError" and "Traceback" not in str(views[2])
        assert 3 in s.engine.calls  # tried as one batch, then each alone
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/api/v1/gallery").json()["total"] == 3


def test_sixteen_clients_four_requests_each_get_their_own_images(tmp_path):
    engine = FakeEngine(step_delay=0.002)
    with live_server(tmp_path, engine, max_queue=64, batch_window_ms=20, max_batch=4) as s:
        errors: list[str] = []

        def client_run(k: int) -> None:
            oai = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
            with httpx.Client(base_url=s.url, timeout=60) as c:
                for i in range(4):
                    prompt, seed = f"client {k} request {i}", 1000 * k + i
                    if i % 2 == 0:
                        res = oai.images.generate(
                            prompt=prompt, response_format="b64_json", extra_body={"seed": seed, "steps": 3}
                        )
                        got = pixel(base64.b64decode(res.data[0].b64_json))
                    else:
                        body = {"prompt": prompt, "seed": seed, "steps": 3, "width": 64, "height": 64}
                        res = c.post("/sdapi/v1/txt2img", json=body).json()
                        got = pixel(base64.b64decode(res["images"][0]))
                        if res["parameters"]["prompt"] != prompt:
                            errors.append(f"{prompt}: parameters of another request")
                    if got != colour(prompt, seed):
                        errors.append(f"{prompt}: crossed image")

        threads = [threading.Thread(target=client_run, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and not any(t.is_alive() for t in threads)
        assert sum(engine.calls) == 64 and max(engine.calls) > 1
        assert len(engine.threads) == 1  # one worker thread owns the engine
        assert s.service.gallery.search(limit=1)[1] == 64


def test_models_say_whether_the_server_can_run_them(tmp_path):
    with live_server(tmp_path) as s, s.client() as c:
        usable = {m["name"]: m["usable"] for m in c.get("/api/v1/models").json()["models"]}
        assert usable == {"sdplay-emoji": True, "sd-v1-4": True, "sdxl-base-1.0": False}
    with live_server(tmp_path, random_weights=True) as s, s.client() as c:
        assert all(m["usable"] for m in c.get("/api/v1/models").json()["models"])
        assert c.post("/api/v1/jobs", json={"prompt": "x", "model": "sdxl-base-1.0"}).status_code == 202
