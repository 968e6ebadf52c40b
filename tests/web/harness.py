"""The live sdplay app for UI tests: `sdplay serve`'s app (create_app + uvicorn) on a free loopback port."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from live import LiveServer
from live import live_server as _live_server

CHROMIUM = os.environ.get("SDPLAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@contextlib.contextmanager
def live_server(tmp_path: Path, engine, model: str, **overrides) -> Iterator[LiveServer]:
    """`sdplay serve`'s app over the real engine on a small model, for the browser."""
    options = {
        "output_dir": tmp_path / "outputs",
        "default_model": model,
        "devices": ("cpu",),
        "preview_interval_s": 0.0,
    }
    with _live_server(tmp_path, engine, **{**options, **overrides}) as live:
        yield live
