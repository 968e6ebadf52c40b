"""One engine per device: each device has its own engine and worker, and devices generate at the same time."""

from __future__ import annotations

import io
from dataclasses import replace

from fake_engine import FakeEngine, colour
from live import live_server, pixel, wait_job
from PIL import Image

from sdplay import catalog
from sdplay.engine import Engine
from sdplay.types import GenerationRequest


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Seconds during which both intervals were running."""
    return min(a[1], b[1]) - max(a[0], b[0])


def test_two_devices_generate_at_the_same_time(tmp_path):
    engines = [FakeEngine(step_delay=0.05, device="cuda:0"), FakeEngine(step_delay=0.05, device="cuda:1")]
    with live_server(tmp_path, engines, devices=("cuda:0", "cuda:1")) as s, s.client() as c:
        assert [w.engine for w in s.service.workers] == engines  # one worker per engine
        ids = [c.post("/api/v1/jobs", json={"prompt": f"p{i}", "steps": 8, "seed": i}).json()["id"] for i in range(4)]
        views = [wait_job(c, job_id) for job_id in ids]
        files = [c.get(f"/api/v1/jobs/{job_id}/images/0").content for job_id in ids]
    assert [v["status"] for v in views] == ["done"] * 4
    assert [pixel(f) for f in files] == [colour(f"p{i}", i) for i in range(4)]  # nothing crossed between devices
    assert all(e.calls for e in engines), "both devices must have run jobs"
    assert {v["request"]["device"] for v in views} == {"cuda:0", "cuda:1"}
    first, second = engines[0].intervals, engines[1].intervals
    assert max(_overlap(a, b) for a in first for b in second) > 0.1, (first, second)


def test_a_device_keeps_its_own_jobs_and_engine_thread(tmp_path):
    engines = [FakeEngine(step_delay=0.01, device="cuda:0"), FakeEngine(step_delay=0.01, device="cuda:1")]
    with live_server(tmp_path, engines, devices=("cuda:0", "cuda:1"), max_batch=1) as s, s.client() as c:
        ids = [c.post("/api/v1/jobs", json={"prompt": "x", "steps": 2, "seed": i}).json()["id"] for i in range(6)]
        views = [wait_job(c, job_id) for job_id in ids]
    assert sum(len(e.calls) for e in engines) == 6
    for engine in engines:
        assert len(engine.threads) == 1  # each engine is called by its own worker only
    assert engines[0].threads != engines[1].threads
    assert {v["request"]["device"] for v in views} == {"cuda:0", "cuda:1"}


class TinyEngine(Engine):
    """A real engine whose catalog also lists a tiny random SD1 folder as "tiny"."""

    def __init__(self, folder, **kwargs):
        super().__init__(**kwargs)
        self.folder = folder

    def models(self):
        base = next(m for m in super().models() if m.name == "sdplay-emoji")
        return [replace(base, name="tiny", aliases=(), available=True, usable=True), *super().models()]

    def model_spec(self, name, catalog_only=False):
        if name == "tiny":
            return replace(catalog.resolve(str(self.folder)), name="tiny")
        return super().model_spec(name, catalog_only)


def test_two_real_cpu_engines_run_at_once_and_match_one_engine(tmp_path, tiny_models):
    """Two real engines on the CPU: their jobs overlap in time, and each image equals the one-engine image."""
    engines = [TinyEngine(tiny_models["sd1"], device="cpu", max_models=1) for _ in range(2)]
    body = {"prompt": "a red heart", "model": "tiny", "steps": 10, "width": 64, "height": 64}
    with live_server(tmp_path, engines, devices=("cpu", "cpu")) as s, s.client() as c:
        for engine in engines:  # loaded before the race, so the overlap is the generation itself
            engine.load("tiny")
        ids = [c.post("/api/v1/jobs", json=body | {"seed": seed}).json()["id"] for seed in (1, 2)]
        views = [wait_job(c, job_id, timeout=300) for job_id in ids]
        files = [c.get(f"/api/v1/jobs/{job_id}/images/0").content for job_id in ids]
        jobs = [s.service.get(job_id) for job_id in ids]
    assert [v["status"] for v in views] == ["done", "done"]
    assert {job.engine for job in jobs} == {0, 1}
    spans = [(job.started_at, job.finished_at) for job in jobs]
    assert _overlap(*spans) > 0, spans
    alone = engines[0]
    for seed, data in zip((1, 2), files, strict=True):
        result = alone.generate(alone.plan(GenerationRequest(**body, seed=seed)))
        assert _png_pixels(data) == result.images[0].convert("RGB").tobytes()


def _png_pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").tobytes()
