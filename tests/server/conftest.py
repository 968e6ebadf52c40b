"""Fixtures: a real uvicorn server on 127.0.0.1 (free port) in a thread, over the fake engine."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_engine import FakeEngine


def pytest_collection_modifyitems(config, items):
    """Every test in tests/server runs a real server on loopback."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.server)


@dataclass
class LiveServer:
    url: str
    port: int
    engine: object
    app: object
    settings: object

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

    engine = engine if engine is not None else FakeEngine()
    options = {"output_dir": tmp_path / "out", "gallery_db": tmp_path / "gallery.sqlite3", "batch_window_ms": 0.0}
    settings = Settings(**{**options, **overrides})
    app = create_app(settings, engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
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


@pytest.fixture
def server(tmp_path) -> Iterator[LiveServer]:
    with live_server(tmp_path) as live:
        yield live


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def wait_job(client: httpx.Client, job_id: str, timeout: float = 20.0) -> dict:
    """Poll a native job until it is done, failed or cancelled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        if view["status"] in ("done", "failed", "cancelled"):
            return view
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish: {view}")


def pixel(data: bytes) -> tuple[int, int, int]:
    """The colour of the centre pixel of an encoded image."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").getpixel((img.width // 2, img.height // 2))


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream."""
    import json

    event, data = None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and event:
            yield event, json.loads("\n".join(data)) if data else {}
            event, data = None, []
