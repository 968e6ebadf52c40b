"""Host and origin checks (DNS rebinding, cross-site requests) and absolute URLs that never echo the Host."""

from __future__ import annotations

import httpx
import openai
import pytest
from live import live_server, wait_job

from sdplay.server.security import host_name, public_base_url
from sdplay.server.settings import Settings


def test_a_keyless_server_answers_only_hosts_naming_its_address(tmp_path):
    with live_server(tmp_path, allowed_hosts=("studio.lan",)) as s, s.client() as c:
        for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}", f"[::1]:{s.port}", "LOCALHOST.", "studio.lan"):
            assert c.get("/api/v1/gallery", headers={"host": host}).status_code == 200, host
        for host in ("rebind.evil.example", f"evil.example:{s.port}", "127.0.0.1.nip.io", "localhost.evil", "[::2]"):
            for path, shape in (("/api/v1/gallery", "message"), ("/v1/models", "message"), ("/sdapi/v1/options", "")):
                r = c.get(path, headers={"host": host})
                assert r.status_code == 421, (host, path, r.text)
                body = r.json()
                assert ("--allowed-host" in body["error"][shape]) if shape else ("--allowed-host" in body["detail"])
            assert c.post("/api/v1/jobs", json={"prompt": "x"}, headers={"host": host}).status_code == 421
            assert c.get("/", headers={"host": host}).status_code == 421  # the browser UI too
        assert c.get("/api/v1/jobs").json()["jobs"] == []


def test_a_server_with_a_key_answers_any_host_with_the_key(tmp_path):
    with live_server(tmp_path, api_key="k") as s, s.client() as c:
        key = {"authorization": "Bearer k"}
        assert c.get("/api/v1/gallery", headers={"host": "images.example.org", **key}).status_code == 200
        assert c.get("/api/v1/gallery", headers={"host": "images.example.org"}).status_code == 401


def test_cross_site_state_changes_are_refused_with_or_without_a_body(tmp_path):
    with live_server(tmp_path, cors_origins=("http://trusted.example",)) as s, s.client() as c:
        own = f"http://127.0.0.1:{s.port}"
        for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {"sec-fetch-site": "cross-site"},
                        {"sec-fetch-site": "same-site"}, {"origin": f"http://localhost:{s.port}"}):  # fmt: skip
            for method, path, kwargs in (("POST", "/sdapi/v1/interrupt", {}), ("POST", "/sdapi/v1/skip", {}),
                                         ("POST", "/api/v1/jobs", {"json": {"prompt": "x"}}),
                                         ("DELETE", "/api/v1/gallery/1", {}),
                                         ("POST", "/v1/images/generations", {"json": {"prompt": "x"}})):  # fmt: skip
                r = c.request(method, path, headers=headers, **kwargs)
                assert r.status_code == 403 and "--cors-origin" in r.text, (headers, path, r.text)
        assert c.get("/api/v1/jobs").json()["jobs"] == []
        # Reads are left to CORS; same-origin pages, trusted origins and programs (no headers) may change state.
        assert c.get("/api/v1/gallery", headers={"origin": "http://evil.example"}).status_code == 200
        for headers in ({"origin": own}, {"origin": "http://trusted.example"}, {"sec-fetch-site": "same-origin"},
                        {"sec-fetch-site": "none"}, {}):  # fmt: skip
            r = c.post("/api/v1/jobs", json={"prompt": "ok", "steps": 1}, headers=headers)
            assert r.status_code == 202, (headers, r.text)
            wait_job(c, r.json()["id"])
        assert c.post("/sdapi/v1/interrupt", headers={"origin": own}).status_code == 200


def test_absolute_urls_never_come_from_the_host_header(tmp_path):
    with live_server(tmp_path, allowed_hosts=("alias.lan",)) as s:
        oai = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0,
                            default_headers={"host": "alias.lan"})  # fmt: skip
        url = oai.images.generate(prompt="link", response_format="url", extra_body={"steps": 1}).data[0].url
        assert url.startswith(f"http://127.0.0.1:{s.port}/v1/images/files/"), url
        assert httpx.get(url).status_code == 200
    with live_server(tmp_path / "public", public_url="https://images.example.org/sd/") as s:
        res = httpx.post(s.url + "/v1/images/generations", json={"prompt": "p", "model": "dall-e-2", "steps": 1},
                         headers={"host": "images.example.org"}, timeout=30)  # fmt: skip
        assert res.json()["data"][0]["url"].startswith("https://images.example.org/sd/v1/images/files/")


@pytest.mark.parametrize(
    "value, name",
    [("Example.org:7860", "example.org"), ("[::1]:80", "::1"), ("::1", "::1"), ("localhost.", "localhost")],
)
def test_host_names(value, name):
    assert host_name(value) == name


def test_public_base_url():
    assert public_base_url(Settings()) == "http://127.0.0.1:7860/"
    assert public_base_url(Settings(host="::1", port=9)) == "http://[::1]:9/"
    assert public_base_url(Settings(public_url="https://a.example/x")) == "https://a.example/x/"
    with pytest.raises(Exception, match="public_url"):
        Settings(public_url="a.example").check()
