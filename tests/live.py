"""Shared helpers for tests that drive a live server over HTTP."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

TERMINAL = ("done", "failed", "cancelled")


def wait_job(client: httpx.Client, job_id: str, timeout: float = 60.0, poll: float = 0.05) -> dict:
    """Poll a native job until it is done, failed or cancelled; return its last view."""
    deadline = time.monotonic() + timeout
    view: dict = {}
    while time.monotonic() < deadline:
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        if view["status"] in TERMINAL:
            return view
        time.sleep(poll)
    raise AssertionError(f"job {job_id} did not finish in {timeout:.0f} s: {view}")


@dataclass
class LiveServer:
    url: str
    port: int
    engine: object
    app: object
    settings: object

    @property
    def model(self) -> str | None:
        return self.settings.default_model

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    @property
    def service(self):
        return self.app.state.service


@contextlib.contextmanager
def live_server(tmp_path: Path, engine=None, **overrides) -> Iterator[LiveServer]:
    """Start create_app(settings, engine) under uvicorn on a free loopback port; stop it afterwards."""
    import uvicorn

    from sdplay.server.app import create_app
    from sdplay.server.settings import Settings

    if engine is None:
        from fake_engine import FakeEngine  # tests/server's engine double

        engine = FakeEngine()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = {"output_dir": tmp_path / "out", "gallery_db": tmp_path / "gallery.sqlite3", "batch_window_ms": 0.0,
               "input_dir": tmp_path / "in"}  # fmt: skip
    settings = Settings(**{**options, "port": port, **overrides})  # the bound port: absolute URLs name it
    app = create_app(settings, engine)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", port, engine, app, settings)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def pixel(data: bytes) -> tuple[int, int, int]:
    """The colour of the centre pixel of an encoded image."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").getpixel((img.width // 2, img.height // 2))


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream."""
    event, data = None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and event:
            yield event, json.loads("\n".join(data)) if data else {}
            event, data = None, []
