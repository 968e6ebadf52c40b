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
def browser_page(browser, base_url: str) -> Iterator:
    """A page in a fresh browser context (its own profile) on `base_url`; errors it logs fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=base_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 4" not in msg.text else None,
    )
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page logged errors: {errors}"


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
