from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_tiny_folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny SD1 (epsilon), SD2 (v-prediction) and SDXL (two text encoders) folders."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: make_tiny_folder(family, root / family) for family in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="session")
def engine():
    from sdplay.engine import Engine

    return Engine(max_models=4)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SDPLAY_CACHE", str(tmp_path_factory.getbasetemp() / "sdplay-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
