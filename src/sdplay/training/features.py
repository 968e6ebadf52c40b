"""Fixed picks of evaluation images and the pixel features that retrieval compares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sdplay.training.data import CaptionedImages

FEATURE_SIZE = 32


def eval_indices(data: CaptionedImages, n: int) -> list[int]:
    """A fixed, evenly spread choice of `n` images (every category is covered)."""
    picks = np.unique(np.linspace(0, len(data) - 1, min(n, len(data))).round().astype(int))
    return [int(i) for i in picks]


def features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 32*32*3) float32: area-downsampled pixels in [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    x = F.adaptive_avg_pool2d(x, FEATURE_SIZE)  # (N, 3, 32, 32)
    return x.flatten(1).numpy()
