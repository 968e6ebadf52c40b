"""Where sdplay keeps what it builds (converted checkpoints, configs, compiled kernels): $SDPLAY_CACHE."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SDPLAY_CACHE", Path.home() / ".cache" / "sdplay"))


@contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """A temporary file beside `path` to write; renamed over `path` (readable by all) when the block ends without an
    error, removed otherwise, so a write stopped half-way (Ctrl-C, a full disk) leaves the previous file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
