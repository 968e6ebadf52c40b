"""The small model the UI tests run on: the embedded sdplay-emoji model when its weights are installed,
else a tiny random SD1 folder (tests/tiny.py) listed in the real engine's catalog under a short name."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import make_tiny_folder

from sdplay import catalog
from sdplay.catalog import ModelSpec
from sdplay.engine import Engine
from sdplay.types import ModelInfo

EMBEDDED = "sdplay-emoji"
TINY = "tiny-sd1"


class FolderEngine(Engine):
    """The real engine, with one local diffusers folder offered in its model list as `name`."""

    def __init__(self, name: str, folder: Path, **kwargs):
        super().__init__(**kwargs)
        self.name, self.folder = name, folder

    def models(self) -> list[ModelInfo]:
        base = next(m for m in super().models() if m.name == EMBEDDED)
        own = replace(base, name=self.name, aliases=(), available=True, usable=True,
                      loaded=self.name in self.loaded_models(),
                      description="Tiny random-weight SD1 model for tests.")  # fmt: skip
        return [own, *super().models()]

    def model_spec(self, name: str | None, catalog_only: bool = False) -> ModelSpec:
        if name == self.name:
            return replace(catalog.resolve(str(self.folder)), name=self.name)
        return super().model_spec(name, catalog_only)


def embedded_available() -> bool:
    return any(m.name == EMBEDDED and m.available for m in Engine().models())


def small_engine(workdir: Path) -> tuple[Engine, str]:
    """(engine, model name) for UI tests; SDPLAY_UI_TEST_MODEL=tiny forces the tiny folder."""
    import os

    if os.environ.get("SDPLAY_UI_TEST_MODEL", "") != "tiny" and embedded_available():
        return Engine(), EMBEDDED
    folder = make_tiny_folder("sd1", workdir / TINY)
    return FolderEngine(TINY, folder), TINY


def with_lora_folder(engine: Engine, model: str, loras: Path, names: tuple[str, ...]) -> Engine:
    """A second engine for the same small model whose LoRA folder is `loras`, holding one real kohya-format
    LoRA file per name (tests/tiny.py writes them for the model's UNet and text encoder)."""
    from tiny import make_kohya_lora

    tiny = isinstance(engine, FolderEngine)
    weights = engine.folder if tiny else catalog.builtin(EMBEDDED).weights_dir
    for seed, name in enumerate(names, start=1):
        make_kohya_lora(weights, loras / f"{name}.safetensors", scale=0.3, seed=seed)
    return FolderEngine(model, weights, lora_dir=str(loras)) if tiny else Engine(lora_dir=str(loras))
