"""Fixtures: the real sdplay app (create_app + uvicorn on 127.0.0.1) over the real engine on a small model,
and a headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import CHROMIUM, CHROMIUM_ARGS, LiveServer, browser_page, live_server
from small_model import small_engine


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    """(engine, model name): the embedded model when its weights are installed, else a tiny random SD1 folder."""
    return small_engine(tmp_path_factory.mktemp("web-models"))


@pytest.fixture(scope="session")
def server(small, tmp_path_factory) -> Iterator[LiveServer]:
    engine, model = small
    with live_server(tmp_path_factory.mktemp("web-server"), engine, model) as live:
        yield live


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's package, a fresh profile); the tests are skipped when it is not installed."""
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.skip(f"Chromium is not installed ({CHROMIUM}): apt-get install chromium (scripts/test.sh does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    path = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server):
    """A page in a fresh browser context (its own profile), opened on the server; console errors fail the test."""
    with browser_page(browser, server.url) as page:
        yield page


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    """screenshot(page, name): a PNG under $SDPLAY_TEST_OUTPUT/web (default: pytest's temporary folder)."""
    root = os.environ.get("SDPLAY_TEST_OUTPUT")
    folder = Path(root) / "web" if root else tmp_path_factory.getbasetemp() / "web-screenshots"
    folder.mkdir(parents=True, exist_ok=True)

    def screenshot(page, name: str, full_page: bool = True) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return screenshot
