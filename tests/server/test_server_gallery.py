"""The SQLite gallery: migrations, search, delete, restarts, and jobs interrupted by a crash."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fake_engine import colour
from live import live_server, pixel, wait_job

from sdplay.server.gallery import INTERRUPTED, SCHEMA_VERSION, Gallery
from sdplay.server.jobs import JobStatus
from sdplay.server.records import ImageRecord, JobFailure, JobRecord, JobResult

HERE = Path(__file__).parent


def _image(job_id: str, index: int, prompt: str, model: str, created_at: float, file: str) -> ImageRecord:
    return ImageRecord(job_id=job_id, index=index, created_at=created_at, prompt=prompt, negative_prompt="",
                       model=model, seed=index, width=64, height=64, steps=4, guidance=4.0, sampler="Euler",
                       request={"prompt": prompt}, file=file)  # fmt: skip


def test_migrations_create_a_versioned_schema_once(tmp_path):
    db = tmp_path / "g.sqlite3"
    Gallery(db, tmp_path).close()
    again = Gallery(db, tmp_path)
    assert again.migrate() == SCHEMA_VERSION
    again.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    con.commit()
    with pytest.raises(Exception, match="newer than this sdplay"):
        Gallery(db, tmp_path)


def test_search_by_text_model_and_date_and_delete(tmp_path):
    g = Gallery(tmp_path / "g.sqlite3", tmp_path)
    (tmp_path / "a").mkdir()
    for i, (prompt, model, day) in enumerate(
        [("red 100% heart", "sdplay-emoji", 1), ("blue_star", "sd-v1-4", 2), ("red star", "sd-v1-4", 3)]
    ):
        (tmp_path / "a" / f"{i}.png").write_bytes(b"png")
        g.add_image(_image("a" * 32, i, prompt, model, 86400.0 * day, f"a/{i}.png"))
    prompts = lambda found: [image.prompt for image in found[0]]  # noqa: E731
    assert prompts(g.search("red")) == ["red star", "red 100% heart"]
    assert (
        prompts(g.search("100%")) == ["red 100% heart"]
        and prompts(g.search("d_s")) == []
        and prompts(g.search("e_s")) == ["blue_star"]
    )
    assert prompts(g.search(model="sd-v1-4")) == ["red star", "blue_star"]
    assert prompts(g.search(since=86400.0 * 2, until=86400.0 * 3)) == ["blue_star"]
    assert g.search(limit=1, offset=1)[1] == 3
    victim = g.search("blue")[0][0]
    assert victim == replace(_image("a" * 32, 1, "blue_star", "sd-v1-4", 86400.0 * 2, "a/1.png"), id=victim.id)
    assert g.get_image(victim.id) == victim and g.image_of_job("a" * 32, 1) == victim
    assert g.delete_image(victim.id) and not (tmp_path / "a" / "1.png").exists()
    assert not g.delete_image(victim.id) and g.search()[1] == 2


def test_job_records_round_trip_and_old_rows_read(tmp_path):
    g = Gallery(tmp_path / "g.sqlite3", tmp_path)
    job = JobRecord("b" * 32, "native", JobStatus.QUEUED, 10.0, {"prompt": "p", "width": 64}, idempotency_key="k")
    g.add_job(job)
    assert g.get_job(job.id) == job and g.job_for_key("k") == job and g.list_jobs("queued", 5) == [job]
    g.job_started(job.id, 11.0)
    assert g.get_job(job.id) == replace(job, status=JobStatus.RUNNING, started_at=11.0)
    result = JobResult((7, 8), (1, 2), 64, 48, {"total": 1.5})
    g.job_finished(job.id, JobStatus.DONE, finished_at=12.0, started_at=11.0, result=result)
    done = g.get_job(job.id)
    assert done == replace(job, status=JobStatus.DONE, started_at=11.0, finished_at=12.0, result=result)
    failure = JobFailure("InvalidRequest", "no", field="steps", hint="fewer")
    g.job_finished(job.id, JobStatus.FAILED, finished_at=13.0, started_at=None, error=failure)
    assert g.get_job(job.id).error == failure and g.get_job(job.id).result is None
    g._write("UPDATE jobs SET result_json=? WHERE id=?", ('{"seeds": [3]}', job.id))  # a row without sizes
    assert g.get_job(job.id).result == JobResult(seeds=(3,))
    assert g.mark_interrupted() == 0 and g.get_job("c" * 32) is None


def test_gallery_api_search_fetch_delete(client, server):
    ids = [client.post("/api/v1/jobs", json={"prompt": p, "seed": 5}).json()["id"] for p in ("cat", "dog", "cat hat")]
    for job_id in ids:
        wait_job(client, job_id)
    page = client.get("/api/v1/gallery", params={"q": "cat"}).json()
    assert page["total"] == 2 and [i["prompt"] for i in page["items"]] == ["cat hat", "cat"]
    item = page["items"][0]
    assert item["seed"] == 5 and item["timings"]["total"] > 0 and item["request"]["n_images"] == 1
    assert pixel(client.get(item["url"]).content) == colour("cat hat", 5)
    today = time.strftime("%Y-%m-%d")
    assert client.get("/api/v1/gallery", params={"since": today}).json()["total"] == 3
    assert client.get("/api/v1/gallery", params={"until": "2000-01-01"}).json()["total"] == 0
    assert client.get("/api/v1/gallery", params={"since": "yesterday"}).status_code == 400
    assert client.delete(f"/api/v1/gallery/{item['id']}").status_code == 204
    assert client.get(f"/api/v1/gallery/{item['id']}").status_code == 404
    assert client.get(item["url"]).status_code == 404
    assert client.get(f"/api/v1/jobs/{ids[2]}/images/0").status_code == 404
    assert client.get("/api/v1/gallery", params={"model": "sdplay-emoji"}).json()["total"] == 2


def test_gallery_survives_a_restart(tmp_path):
    with live_server(tmp_path) as s, s.client() as c:
        job_id = c.post("/api/v1/jobs", json={"prompt": "keep me", "seed": 8}).json()["id"]
        wait_job(c, job_id)
    with live_server(tmp_path) as s, s.client() as c:
        assert c.get("/api/v1/gallery", params={"q": "keep me"}).json()["total"] == 1
        view = c.get(f"/api/v1/jobs/{job_id}").json()
        assert view["status"] == "done" and view["images"][0]["seed"] == 8
        assert pixel(c.get(view["images"][0]["url"]).content) == colour("keep me", 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jobs_cut_off_by_a_crash_are_marked_failed_on_start(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        str(HERE / "run_fake_server.py"),
        "--port",
        str(port),
        "--dir",
        str(tmp_path),
        "--step-delay",
        "0.05",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        done = httpx.post(base + "/api/v1/jobs", json={"prompt": "finished", "steps": 1}).json()["id"]
        while httpx.get(f"{base}/api/v1/jobs/{done}").json()["status"] != "done":
            time.sleep(0.02)
        running = httpx.post(base + "/api/v1/jobs", json={"prompt": "running", "steps": 150}).json()["id"]
        queued = httpx.post(base + "/api/v1/jobs", json={"prompt": "queued"}).json()["id"]
        while httpx.get(f"{base}/api/v1/jobs/{running}").json()["status"] != "running":
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with live_server(tmp_path) as s, s.client() as c:
        for job_id in (running, queued):
            view = c.get(f"/api/v1/jobs/{job_id}").json()
            assert view["status"] == "failed" and INTERRUPTED in view["error"]["message"], view
        assert c.get(f"/api/v1/jobs/{done}").json()["status"] == "done"
        assert c.get("/api/v1/gallery").json()["total"] == 1
        failed = c.get("/api/v1/jobs", params={"status": "failed"}).json()["jobs"]
        assert {j["id"] for j in failed} == {running, queued}
