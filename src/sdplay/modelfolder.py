"""The checkpoints folder (A1111's `models/Stable-diffusion`): single-file checkpoints and diffusers folders that
an engine lists beside the built-in models, by name (a file's name without the suffix, a folder's name).

A server offers them like its catalog models (names only, never paths); files added later are seen by themselves
and by `/sdapi/v1/refresh-checkpoints`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

from sdplay import catalog
from sdplay.catalog import ModelSpec
from sdplay.errors import SdplayError
from sdplay.loras import AddonFile, Folder

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors",)
PICKLED = (".ckpt",)  # listed only when pickle is allowed


class CheckpointFolder(Folder):
    """Checkpoints by name; each one's spec (family from its tensor names or model_index.json) is read once."""

    def __init__(self, root: Path | str | None = None, *, allow_pickle: bool = False):
        super().__init__(root, "checkpoint", SUFFIXES + (PICKLED if allow_pickle else ()), folder="Stable-diffusion",
                         watch=True)  # fmt: skip
        self.allow_pickle = allow_pickle
        self._specs: dict[tuple[str, int, float], ModelSpec | None] = {}
        self._spec_lock = threading.Lock()

    def _scan(self) -> dict[str, AddonFile]:
        if not self.root.is_dir():
            return {}
        found: dict[str, AddonFile] = {}
        folders = []
        for index in sorted(self.root.rglob("model_index.json")):
            folder = index.parent
            beside = any(folder.with_name(folder.name + s).is_file() for s in self.suffixes)
            if folder != self.root and not beside:  # not the configs of a single file next to it
                folders.append(folder)
                stat = index.stat()
                found.setdefault(folder.name, AddonFile(folder.name, folder, stat.st_size, stat.st_mtime))
        for path in sorted(self.root.rglob("*")):
            inside = any(f in path.parents for f in folders)
            if path.is_file() and path.suffix.lower() in self.suffixes and not path.name.startswith(".") and not inside:
                stat = path.stat()
                found.setdefault(path.stem, AddonFile(path.stem, path, stat.st_size, stat.st_mtime))
        return {name: f for name, f in found.items() if catalog.builtin(name) is None}  # built-in names win

    def _lookup(self, files: dict[str, AddonFile], name: str) -> AddonFile | None:
        return files.get(self._stem(name))

    def spec(self, file: AddonFile) -> ModelSpec | None:
        """The spec of a listed checkpoint, named by its name; None (logged once) if it is not a model."""
        key = (str(file.path), file.size, file.mtime)
        with self._spec_lock:
            if key not in self._specs:
                self._specs[key] = self._read_spec(file)
            return self._specs[key]

    def _read_spec(self, file: AddonFile) -> ModelSpec | None:
        try:
            if file.path.is_dir():
                base = catalog.spec_for_folder(file.path)
            else:
                base = catalog.spec_for_file(file.path, allow_pickle=self.allow_pickle)
        except SdplayError as exc:
            log.warning("not listing %s: %s", file.path, exc)
            return None
        what = "diffusers folder" if file.path.is_dir() else "single-file checkpoint"
        return replace(base, name=file.name, aliases=(), description=f"{base.family_spec.label} {what} {file.path}")

    def specs(self) -> list[ModelSpec]:
        return [spec for file in self.files().values() if (spec := self.spec(file)) is not None]

    def has(self, name: str | None) -> bool:
        """True if the folder lists a checkpoint called `name` (its files only are looked at)."""
        return bool(name) and not any(c in name for c in "/\\\0") and self._lookup(self.files(), name) is not None

    def find(self, name: str | None) -> ModelSpec | None:
        """The spec of the checkpoint called `name` (with or without its suffix), if the folder has one."""
        if not name or any(c in name for c in "/\\\0"):
            return None
        file = self._lookup(self.files(), name)
        return self.spec(file) if file is not None else None
