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


ZORBO_STEPS = 200  # a clear effect (test_training_lora.py measures it and checks ss_steps), about 40 s of CPU


@pytest.fixture(scope="session")
def zorbo_lora(tmp_path_factory) -> tuple[Path, Path]:
    """A LoRA trained once by `sdplay train --lora` on the "zorbo" folder: (its .safetensors, the image folder)."""
    import contextlib
    import io

    from zorbo import make_folder

    from sdplay.cli.main import main

    root = tmp_path_factory.mktemp("zorbo")
    images = make_folder(root / "images")
    args = ["train", "--lora", "--init", "sdplay-emoji", "--images", str(images), "--out", str(root / "zorbo")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--steps", str(ZORBO_STEPS), "--batch-size", "4", "--lr", "5e-3", "--device", "cpu",
                     "--no-progress"])  # fmt: skip
    assert code == 0, out.getvalue()
    assert "<lora:zorbo:1>" in out.getvalue(), out.getvalue()
    return root / "zorbo" / "zorbo.safetensors", images
