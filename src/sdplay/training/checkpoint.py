"""Training checkpoints: atomic writes, safe reads, and the exponential moving average of weights."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sdplay.errors import DataError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write `state` to a temporary file beside `path`, flush it to disk, then rename it over `path`.

    A write stopped half-way (Ctrl-C, a full disk, a crash) leaves the previous checkpoint intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain data only: no pickled code)."""
    if not path.is_file():
        raise DataError(
            f"No checkpoint to resume from at {path}.",
            hint="Start without --resume, or point --out at the folder of the run to resume.",
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path} is not a readable sdplay checkpoint ({type(exc).__name__}: {exc}).",
            hint="Delete it to start afresh, or restore it from a copy.",
        ) from exc
    if not isinstance(state, dict) or "step" not in state or "stage" not in state:
        raise DataError(f"{path} is not an sdplay training checkpoint.", hint="Delete it to start afresh.")
    return state


class Ema:
    """An exponential moving average of a set of parameters, warmed up over the first steps."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self, params: list[torch.nn.Parameter], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> list[torch.Tensor]:
        return [s.cpu() for s in self.shadow]

    def load_state_dict(self, shadow: list[torch.Tensor]) -> None:
        self.shadow = [s.to(t.device) for s, t in zip(shadow, self.shadow, strict=True)]
