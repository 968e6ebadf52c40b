"""Bounded work on a real server: device work limits, the per-request time limit, and a blocking request whose
client gives up is cancelled (so the queue behind it moves on)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from fake_engine import FakeEngine
from live import live_server, wait_job


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def _only_job(server):
    _wait_for(lambda: len(server.service.jobs) == 1)
    return next(iter(server.service.jobs.values()))


@pytest.mark.parametrize("path", ["/v1/images/generations", "/sdapi/v1/txt2img"])
def test_a_client_that_disconnects_cancels_its_blocking_request(tmp_path, path):
    with live_server(tmp_path, FakeEngine(step_delay=0.05)) as s, s.client() as c:
        body = {"prompt": "abandoned", "steps": 150, "seed": 1, "width": 64, "height": 64}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + path, json=body, timeout=httpx.Timeout(30, read=1.0))
        job = _only_job(s)
        gave_up = time.monotonic()
        _wait_for(lambda: job.status.terminal, timeout=10)
        assert job.status.value == "cancelled" and job.step < 150
        assert time.monotonic() - gave_up < 3.0
        after = c.post("/api/v1/jobs", json={"prompt": "next", "steps": 2}).json()["id"]
        assert wait_job(c, after)["status"] == "done"  # the queue moved on
        assert c.get("/api/v1/gallery").json()["total"] == 1


def test_a_request_past_the_time_limit_is_stopped_and_says_why(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.05), max_request_s=0.5, max_work=10**9) as s, s.client() as c:
        start = time.monotonic()
        view = wait_job(c, c.post("/api/v1/jobs", json={"prompt": "slow", "steps": 150}).json()["id"])
        assert time.monotonic() - start < 5
        assert view["status"] == "failed" and view["error"]["type"] == "TimeLimitExceeded"
        assert "0.5 s" in view["error"]["message"] and "--max-request-s" in view["error"]["hint"]
        oai = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=2)
        with pytest.raises(openai.APIStatusError) as late:
            oai.images.generate(prompt="slow too", extra_body={"steps": 150})
        assert late.value.status_code == 408 and late.value.response.headers["x-should-retry"] == "false"
        assert sum(1 for j in s.service.jobs.values() if j.request.prompt == "slow too") == 1  # not retried
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "slow a1111", "steps": 150, "width": 64, "height": 64})
        assert r.status_code == 408 and r.json()["error"] == "TimeLimitExceeded"
        assert c.get("/api/v1/gallery").json()["total"] == 0


def test_work_limits_come_from_the_measured_speed_and_the_settings(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.001), max_request_s=2.0) as s, s.client() as c:
        limits = c.get("/api/v1/system").json()["limits"]
        assert limits["max_request_s"] == 2.0 and limits["max_pixels"] == 1024 * 1024  # a CPU's defaults
        prior = limits["max_work"]
        assert wait_job(c, c.post("/api/v1/jobs", json={"prompt": "m", "steps": 20}).json()["id"])["status"] == "done"
        measured = s.service.speed.rate(s.service.workers[0].device, "sdplay-emoji")
        assert measured and c.get("/api/v1/system").json()["limits"]["max_work"] == int(measured * 2.0) != prior
    with live_server(tmp_path / "b", max_work=64 * 64 * 10, max_pixels=64 * 64) as s, s.client() as c:
        over = c.post("/api/v1/jobs", json={"prompt": "x", "steps": 11})
        assert over.status_code == 400 and over.json()["error"]["field"] == "steps"
        assert "at most 10 steps" in over.json()["error"]["hint"]
        big = c.post("/api/v1/jobs", json={"prompt": "x", "width": 128, "height": 64, "steps": 1})
        assert big.status_code == 400 and big.json()["error"]["field"] == "width"
        assert c.post("/api/v1/jobs", json={"prompt": "x", "steps": 10}).status_code == 202


def test_the_schema_states_the_limits_the_server_enforces(tmp_path):
    with live_server(tmp_path, max_images=3, max_side=512, max_steps=40) as s, s.client() as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]

        def maximum(schema: str, field: str) -> int:
            prop = schemas[schema]["properties"][field]
            return min(p["maximum"] for p in [prop, *prop.get("anyOf", [])] if "maximum" in p)

        assert maximum("ImageGenerateRequest", "n") == 3 and maximum("JobCreate", "n_images") == 3
        assert maximum("Txt2ImgRequest", "batch_size") == 3 and maximum("Txt2ImgRequest", "steps") == 40
        assert maximum("JobCreate", "width") == 512 and maximum("Txt2ImgRequest", "height") == 512
        for body in ({"n_images": 4}, {"width": 520}, {"steps": 41}):  # one past each stated maximum
            assert c.post("/api/v1/jobs", json={"prompt": "x", **body}).status_code == 400
        assert c.post("/v1/images/generations", json={"prompt": "x", "n": 4}).status_code == 400
        assert c.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 520}).status_code == 400
