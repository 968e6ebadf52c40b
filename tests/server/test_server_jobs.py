"""Native job API against a live server: submit, status, images, cancel, SSE, idempotency, errors."""

from __future__ import annotations

import threading

from fake_engine import FakeEngine, colour
from live import live_server, pixel, sse_events, wait_job


def test_submit_runs_the_job_and_serves_its_images(client, server):
    r = client.post("/api/v1/jobs", json={"prompt": "red heart", "seed": 41, "n_images": 2})
    assert r.status_code == 202 and r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
    view = wait_job(client, r.json()["id"])
    assert view["status"] == "done" and view["progress"] == 1.0
    assert [im["seed"] for im in view["images"]] == [41, 42]
    assert view["request"]["model"] == "sdplay-emoji" and view["request"]["steps"] == 4  # the model's defaults
    for im in view["images"]:
        png = client.get(im["url"])
        assert png.headers["content-type"] == "image/png"
        assert pixel(png.content) == colour("red heart", im["seed"])
        assert b"parameters" in png.content  # A1111 metadata written with the image
    assert client.get(f"/api/v1/jobs/{view['id']}/images/2").status_code == 404


def test_queued_job_reports_its_position_and_cancels_at_once(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.05)) as s, s.client() as c:
        first = c.post("/api/v1/jobs", json={"prompt": "slow", "steps": 20}).json()
        second = c.post("/api/v1/jobs", json={"prompt": "waiting"}).json()
        third = c.post("/api/v1/jobs", json={"prompt": "waiting too"}).json()
        assert c.get(f"/api/v1/jobs/{third['id']}").json()["position"] == 1
        cancelled = c.post(f"/api/v1/jobs/{second['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        assert c.get(f"/api/v1/jobs/{third['id']}").json()["position"] == 0
        c.post(f"/api/v1/jobs/{first['id']}/cancel")
        assert wait_job(c, first["id"])["status"] == "cancelled"
        assert wait_job(c, third["id"])["status"] == "done"
        assert s.engine.calls == [1, 1]  # the cancelled queued job never reached the engine


def test_running_job_stops_between_steps(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.02)) as s, s.client() as c:
        job = c.post("/api/v1/jobs", json={"prompt": "long", "steps": 100}).json()
        while c.get(f"/api/v1/jobs/{job['id']}").json()["step"] < 3:
            pass
        c.post(f"/api/v1/jobs/{job['id']}/cancel")
        view = wait_job(c, job["id"])
        assert view["status"] == "cancelled" and 3 <= view["step"] < 100 and view["images"] == []


def test_running_status_has_step_of_n_and_eta(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.02)) as s, s.client() as c:
        job = c.post("/api/v1/jobs", json={"prompt": "eta", "steps": 30}).json()
        view = c.get(f"/api/v1/jobs/{job['id']}").json()
        while view["step"] < 5:
            view = c.get(f"/api/v1/jobs/{job['id']}").json()
        assert view["status"] == "running" and view["total_steps"] == 30
        assert view["eta_s"] is not None and 0 < view["eta_s"] < 30
        assert wait_job(c, job["id"])["status"] == "done"


def test_event_stream_has_progress_previews_and_the_result(tmp_path):
    with live_server(tmp_path, FakeEngine(step_delay=0.01), preview_interval_s=0.0) as s, s.client() as c:
        job = c.post("/api/v1/jobs", json={"prompt": "stream", "steps": 8, "seed": 3}).json()
        with c.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(r))
    names = [name for name, _ in events]
    assert names[-1] == "done" and names[0] in ("status", "progress")
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and steps[-1] == 8
    previews = [data for name, data in events if name == "preview"]
    assert previews and previews[0]["image"].startswith("data:image/png;base64,")
    assert events[-1][1]["images"][0]["seed"] == 3


def test_events_of_a_finished_job_give_its_outcome(client):
    job = client.post("/api/v1/jobs", json={"prompt": "done already"}).json()
    wait_job(client, job["id"])
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
        assert [name for name, _ in sse_events(r)] == ["done"]


def test_idempotency_key_never_runs_twice(client, server):
    body = {"prompt": "once", "seed": 9}
    first = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    again = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    wait_job(client, first.json()["id"])
    late = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert late.json()["id"] == first.json()["id"] and late.json()["status"] == "done"
    assert server.engine.calls == [1]
    other = client.post("/api/v1/jobs", json={"prompt": "something else"}, headers={"Idempotency-Key": "abc-1"})
    assert other.status_code == 422 and "different request" in other.json()["error"]["message"]


def test_concurrent_retries_with_one_key_make_one_job(client, server):
    ids, body = [], {"prompt": "race", "seed": 1}

    def post():
        ids.append(client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "race"}).json()["id"])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    wait_job(client, ids[0])
    assert server.engine.calls == [1]


def test_failed_job_reports_the_engine_error(client):
    job = client.post("/api/v1/jobs", json={"prompt": "boom [oom]"}).json()
    view = wait_job(client, job["id"])
    assert view["status"] == "failed"
    assert view["error"]["type"] == "DeviceOutOfMemory" and "smaller size" in view["error"]["message"]


def test_list_jobs_newest_first_and_by_status(client):
    ids = [client.post("/api/v1/jobs", json={"prompt": f"p{i}"}).json()["id"] for i in range(3)]
    for job_id in ids:
        wait_job(client, job_id)
    listed = client.get("/api/v1/jobs", params={"status": "done"}).json()["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]
    assert client.get("/api/v1/jobs", params={"status": "failed"}).json()["jobs"] == []


def test_bad_inputs_are_4xx_with_a_useful_message(client):
    cases = [
        ({"prompt": "x", "n_images": 0}, 400, "n_images"),
        ({"prompt": "x", "width": 65}, 400, "multiple of 8"),
        ({"prompt": "x", "model": "nope"}, 404, "Choose one of"),
        ({"prompt": "x", "model": "sdxl-base-1.0"}, 404, "hf download"),
        ({"prompt": "x", "sampler": "Wobbly"}, 400, "Choose one of"),
        ({"prompt": "x", "sampler": "Euler", "scheduler": "Exponential"}, 400, "Automatic, Uniform, Karras"),
        ({"prompt": "x", "steps": 10_000}, 400, "steps"),
        ({"prompt": "x", "colour": "red"}, 400, "colour"),
        ({"prompt": "x", "width": 2048, "height": 4096}, 400, "at most 2048"),
        ({"negative_prompt": "no prompt"}, 400, "prompt"),
    ]
    for body, status, words in cases:
        r = client.post("/api/v1/jobs", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert words in err["message"], (body, err)
        assert "Traceback" not in r.text
    assert (
        client.post("/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 400
    )
    assert client.get("/api/v1/jobs/../../etc/passwd").status_code == 404
    assert client.get("/api/v1/jobs/" + "a" * 32).status_code == 404
    assert client.get("/api/v1/jobs/" + "a" * 32 + "/images/0").status_code == 404


def test_server_limits_apply_before_queueing(tmp_path):
    with live_server(tmp_path, max_images=2, max_steps=10, max_side=128) as s, s.client() as c:
        for body, field in (({"n_images": 3}, "n_images"), ({"steps": 11}, "steps"), ({"width": 256}, "width")):
            r = c.post("/api/v1/jobs", json={"prompt": "x", **body})
            assert r.status_code == 400 and r.json()["error"]["field"] == field
            assert "this server allows at most" in r.json()["error"]["message"]
        assert s.engine.calls == []


def test_found_by_fuzzing_empty_key_and_allow_header(client):
    for _ in range(2):  # an empty Idempotency-Key means none (it used to hit the database's unique index)
        assert client.post("/api/v1/jobs", json={"prompt": "e"}, headers={"Idempotency-Key": ""}).status_code == 202
    wrong = client.request("OPTIONS", "/api/v1/gallery/1")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "DELETE, GET"
    assert client.delete("/api/v1/jobs").headers["allow"] == "GET, POST"
