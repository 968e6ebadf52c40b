"""Where sdplay keeps what it builds (converted checkpoints, configs, compiled kernels): $SDPLAY_CACHE."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SDPLAY_CACHE", Path.home() / ".cache" / "sdplay"))
