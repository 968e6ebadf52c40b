"""A hostile corpus replayed against a real server on loopback: every request gets a 4xx in its API's error
shape (never a 5xx), nothing reaches the engine, and the gallery is unchanged."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from fake_engine import FakeEngine
from hostile_png import black_idat, itxt, png, text, ztxt_bomb
from live import live_server, wait_job

from sdplay.limits import DEFAULTS

A1111_KEYS = {"error", "detail", "body", "errors"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw(body: str) -> dict:
    return {"content": body.encode("utf-8"), "headers": {"content-type": "application/json"}}


def _corpus(model_checkpoints=(5, [1], {"a": 1}, True, 1.5)) -> list[tuple[str, str, dict, int]]:
    """(method, path, httpx keyword arguments, expected status)."""
    t2i, oai, jobs = "/sdapi/v1/txt2img", "/v1/images/generations", "/api/v1/jobs"
    cases: list[tuple[str, str, dict, int]] = []
    for value in model_checkpoints:
        cases.append(("POST", t2i, {"json": {"prompt": "x", "override_settings": {"sd_model_checkpoint": value}}}, 400))
    for chunks in ([itxt("sdplay", "{not json")], [itxt("sdplay", '{"a": NaN}')], [itxt("sdplay", '["\\udfff"]')],
                   [text("parameters", 'p\nSteps: 2, Foo: "abc')], [text("parameters", 'p\nSteps: 2, Foo: "\\x"')],
                   [itxt("sdplay", "[" * 50_000 + "]" * 50_000)]):  # fmt: skip
        cases.append(("POST", "/sdapi/v1/png-info", {"json": {"image": b64(png(8, 8, *chunks))}}, 400))
    cases += [
        ("POST", "/sdapi/v1/png-info", {"json": {"image": b64(png(20000, 20000, idat=b""))}}, 413),
        ("POST", "/sdapi/v1/png-info", {"json": {"image": b64(png(8, 8, ztxt_bomb(megabytes=50)))}}, 413),
        ("POST", "/sdapi/v1/png-info", {"json": {"image": b64(png(8, 8)[:-20])}}, 400),
        ("POST", "/sdapi/v1/png-info", {"json": {"image": "data:image/png;base64," + b64(b"GIF89a")}}, 400),
        ("POST", "/sdapi/v1/png-info", {"json": {"image": "%%%"}}, 400),
        ("POST", "/sdapi/v1/png-info", {"json": {"image": 5}}, 400),
    ]
    # Work no device here should take on: a CPU's limits (size per image, pixel-steps), on every API.
    cases += [
        ("POST", oai, {"json": {"prompt": "x", "size": "1024x1792", "steps": 1}}, 400),
        ("POST", t2i, {"json": {"prompt": "x", "width": 1024, "height": 1792, "steps": 1}}, 400),
        ("POST", jobs, {"json": {"prompt": "x", "width": 1024, "height": 1792, "steps": 1}}, 400),
        ("POST", jobs, {"json": {"prompt": "x", "width": 1024, "height": 1024, "steps": 150, "n_images": 8}}, 400),
        ("POST", t2i, {"json": {"prompt": "x", "width": 1024, "height": 1024, "steps": 150}}, 400),
    ]
    # Not JSON as RFC 8259 has it: NaN, Infinity, overflowing numbers, lone surrogates, absurd nesting.
    for body in ('{"prompt": "x", "subseed_strength": NaN}', '{"prompt": "x", "cfg_scale": Infinity}',
                 '{"prompt": "x", "eta": 1e999}', '{"prompt": "x", "override_settings": {"a": -Infinity}}',
                 '{"prompt": "x", "comments": {"a": NaN}}', '{"prompt": "\\ud800"}',
                 '{"prompt": "x", "styles": ["\\udc00"]}',
                 '{"prompt": "x", "script_args": ' + "[" * 5000 + "]" * 5000 + "}",
                 '{"prompt": "x", "steps": ' + "9" * 5000 + "}", '{"prompt": "x"'):  # fmt: skip
        cases += [("POST", t2i, raw(body), 400), ("POST", oai, raw(body), 400), ("POST", jobs, raw(body), 400)]
    cases += [
        ("POST", "/sdapi/v1/options", raw('{"sd_vae": NaN}'), 400),
        ("POST", "/sdapi/v1/options", {"json": {"sd_model_checkpoint": ["no"]}}, 404),
        ("POST", oai, {"json": {"prompt": "x", "size": "0x0"}}, 400),
        ("POST", oai, {"json": {"prompt": "x", "size": "0x64"}}, 400),
        ("POST", oai, {"json": {"prompt": "x", "size": "64x0"}}, 400),
        ("POST", oai, {"json": {"prompt": "x", "n": 9}}, 400),  # over max_images (8), within OpenAI's 10
        ("POST", oai, {"json": {"prompt": "x", "seed": 2**32 - 1, "n": 2}}, 400),
        ("POST", t2i, {"json": {"prompt": "x", "seed": 2**32 - 1, "batch_size": 2}}, 400),
        ("POST", t2i, {"json": {"prompt": "x", "subseed": 2**40}}, 400),
        ("POST", jobs, {"json": {"prompt": "x", "seed": 2**32 - 1, "n_images": 3}}, 400),
        ("POST", jobs, {"json": {"prompt": "x", "width": 4096, "height": 8}}, 400),  # over max_side
        ("GET", "/api/v1/gallery?q=%00", {}, 400),
        ("GET", "/api/v1/gallery?q=a%00b", {}, 400),
        ("GET", "/v1/images/files/a.b.c.d.%C3%A9", {}, 404),
        ("GET", "/v1/images/files/" + "%F0%9F%92%A9" * 20, {}, 404),
        ("GET", "/v1/models/no-such-model", {}, 404),
        ("POST", "/sdapi/v1/interrupt", {"headers": {"origin": "http://evil.example"}}, 403),
        ("POST", "/sdapi/v1/skip", {"headers": {"sec-fetch-site": "cross-site"}}, 403),
        ("DELETE", "/api/v1/gallery/1", {"headers": {"origin": "null"}}, 403),
        ("POST", jobs, {"json": {"prompt": "x"}, "headers": {"origin": "https://evil.example"}}, 403),
        ("GET", "/api/v1/gallery", {"headers": {"host": "rebind.evil.example"}}, 421),
        ("GET", "/sdapi/v1/options", {"headers": {"host": "rebind.evil.example:7860"}}, 421),
        ("POST", oai, {"json": {"prompt": "x"}, "headers": {"host": "127.0.0.1.evil.example"}}, 421),
        ("GET", "/", {"headers": {"host": "localhost.evil.example"}}, 421),
    ]
    return cases


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    # The CPU's work limit fixed at its prior (the fake engine is so fast that its measured speed would allow all).
    work = int(DEFAULTS["cpu"].rate * DEFAULTS["cpu"].max_seconds)
    with live_server(tmp_path_factory.mktemp("hostile"), FakeEngine(), max_work=work) as s, s.client() as c:
        first = c.post("/api/v1/jobs", json={"prompt": "keep me", "seed": 3}).json()["id"]
        assert wait_job(c, first)["status"] == "done"
        yield s, c


def _gallery_state(client: httpx.Client) -> tuple:
    page = client.get("/api/v1/gallery").json()
    images = [client.get(item["url"]).content for item in page["items"]]
    return page["total"], [item["id"] for item in page["items"]], images, len(client.get("/api/v1/jobs").json()["jobs"])


def test_every_hostile_request_is_a_4xx_in_its_apis_shape_and_harms_nothing(hostile):
    server, client = hostile
    before, calls = _gallery_state(client), list(server.engine.calls)
    failures = []
    for method, path, kwargs, status in _corpus():
        r = client.request(method, path, **kwargs)
        shape_ok = _shaped(path, r)
        if r.status_code != status or not shape_ok or "Traceback" in r.text:
            failures.append((method, path, str(kwargs)[:120], status, r.status_code, r.text[:200]))
    assert not failures, "\n".join(map(str, failures))
    assert _gallery_state(client) == before, "the gallery changed"
    assert server.engine.calls == calls, "a hostile request reached the engine"
    assert client.get("/health").json()["status"] == "ok"


def _shaped(path: str, r: httpx.Response) -> bool:
    body = r.json()
    if path.startswith("/v1/"):
        err = body["error"]
        return set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if path.startswith("/sdapi/"):
        return set(body) == A1111_KEYS and bool(body["detail"])
    return set(body["error"]) == {"type", "message", "field", "hint"} and bool(body["error"]["message"])


def test_non_ascii_credentials_are_simply_wrong(tmp_path):
    with live_server(tmp_path, api_key="sécret-key", api_auth="alice:wönder") as s, s.client() as c:
        for value in ("Bearer é", "Bearer sécret-keyé", "Basic " + b64("any:é".encode()), "Basic é",
                      "Basic " + b64(b"alice:\xff"), "Bearer \udcff", "Bearer " + "é" * 5000):  # fmt: skip
            header = value.encode("utf-8", "surrogateescape")
            for path in ("/api/v1/gallery", "/v1/models", "/sdapi/v1/sd-models"):
                r = c.get(path, headers={"authorization": header})
                assert r.status_code == 401 and "Traceback" not in r.text, (value, path, r.status_code, r.text)
        good = {"authorization": "Bearer sécret-key".encode()}
        assert c.get("/api/v1/gallery", headers=good).status_code == 200
        basic = {"authorization": ("Basic " + b64("alice:wönder".encode())).encode()}
        assert c.get("/sdapi/v1/sd-models", headers=basic).status_code == 200


def test_png_info_of_a_big_valid_png_reads_only_its_text(hostile):
    import psutil

    _server, client = hostile
    image = png(9000, 9000, text("parameters", "huge\nSteps: 2, Seed: 5"), idat=black_idat(9000, 9000))
    assert len(b64(image)) < 400_000
    rss = psutil.Process().memory_info().rss
    for _ in range(3):
        r = client.post("/sdapi/v1/png-info", json={"image": b64(image)})
        assert r.status_code == 200 and r.json()["parameters"]["Seed"] == "5"
    grown = psutil.Process().memory_info().rss - rss
    assert grown < 60 * 2**20, f"the server grew by {grown / 2**20:.0f} MB"  # decoding: 243 MB per image


def test_openai_errors_are_typed_by_their_status(hostile):
    _server, client = hostile
    err = client.post("/v1/images/generations", json={"prompt": "x", "size": "0x0"}).json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "size"
    missing = client.get("/v1/nothing-here").json()["error"]
    assert missing["type"] == "invalid_request_error"


def test_info_and_options_stay_strict_json(hostile):
    _server, client = hostile
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "finite", "steps": 2, "subseed_strength": 0.5})
    json.loads(r.json()["info"], parse_constant=lambda name: pytest.fail(f"{name} in info"))
    assert client.post("/sdapi/v1/options", json={"some_option": 1.5}).status_code == 200
    json.loads(client.get("/sdapi/v1/options").text, parse_constant=lambda name: pytest.fail(f"{name} in options"))
