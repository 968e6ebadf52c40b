"""The live sdplay app for UI tests: `sdplay serve`'s app (create_app + uvicorn) on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

CHROMIUM = os.environ.get("SDPLAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@dataclass
class LiveServer:
    url: str
    app: object
    model: str

    @property
    def service(self):
        return self.app.state.service


@contextlib.contextmanager
def live_server(tmp_path: Path, engine, model: str, **overrides) -> Iterator[LiveServer]:
    """`sdplay serve`'s app on a free loopback port, in a thread; stopped afterwards."""
    import uvicorn

    from sdplay.server.app import create_app
    from sdplay.server.settings import Settings

    settings = Settings(
        output_dir=tmp_path / "outputs",
        gallery_db=tmp_path / "gallery.sqlite3",
        default_model=model,
        devices=("cpu",),
        batch_window_ms=0.0,
        preview_interval_s=0.0,
    )
    app = create_app(replace(settings, **overrides), engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the sdplay server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app, model)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
