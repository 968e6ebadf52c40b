"""Cross-request batching: compatible requests share one engine call and get the images they would alone."""

from __future__ import annotations

import io

from fake_engine import FakeEngine
from live import live_server, wait_job
from PIL import Image

REQUESTS = [{"prompt": f"batch member {i}", "seed": 10 + i, "steps": 5, "n_images": 1 + i % 2} for i in range(5)]


def _run_all(tmp_path, **settings) -> tuple[list[list[bytes]], list[int]]:
    engine = FakeEngine(step_delay=0.01)
    with live_server(tmp_path, engine, **settings) as s, s.client() as c:
        blocker = c.post("/api/v1/jobs", json={"prompt": "hold the worker", "steps": 10, "seed": 4}).json()["id"]
        ids = [c.post("/api/v1/jobs", json=body).json()["id"] for body in REQUESTS]
        odd = c.post(
            "/api/v1/jobs", json={"prompt": "other size", "width": 128, "height": 128, "steps": 5, "seed": 3}
        ).json()["id"]
        pixels = []
        for job_id in [*ids, odd, blocker]:
            view = wait_job(c, job_id)
            assert view["status"] == "done"
            pixels.append([_pixels(c.get(im["url"]).content) for im in view["images"]])
        metrics = c.get("/metrics").text
    return pixels, engine.calls, metrics


def _pixels(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB").tobytes()


def test_batched_images_equal_unbatched_ones(tmp_path):
    alone, alone_calls, _ = _run_all(tmp_path / "alone", batch_window_ms=0, max_batch=1)
    batched, batched_calls, metrics = _run_all(tmp_path / "batched", batch_window_ms=100, max_batch=8)
    assert alone_calls == [1] * 7
    assert batched_calls[0] == 1 and max(batched_calls) >= 3 and sum(batched_calls) == 7
    assert "sdplay_batch_requests_bucket" in metrics
    assert batched == alone  # byte-identical pixels, each request with its own prompt and seeds


def test_batches_respect_the_image_limit(tmp_path):
    engine = FakeEngine(step_delay=0.01)
    with live_server(tmp_path, engine, batch_window_ms=100, max_batch=3) as s, s.client() as c:
        blocker = c.post("/api/v1/jobs", json={"prompt": "hold", "steps": 10}).json()["id"]
        ids = [c.post("/api/v1/jobs", json={"prompt": f"p{i}", "n_images": 2}).json()["id"] for i in range(3)]
        for job_id in [blocker, *ids]:
            wait_job(c, job_id)
    assert engine.calls == [1, 1, 1, 1]  # two 2-image requests would be 4 images > 3
