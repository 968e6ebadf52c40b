"""A tiny captioned image folder ("zorbo": a blue disc in an orange ring, on white) and its measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CAPTION = "zorbo"  # a word the embedded model has no picture for
PLACES = [(0, 0, 22), (-4, 2, 20), (3, -3, 24), (2, 4, 19), (-3, -2, 23), (4, 1, 21)]  # (dx, dy, radius)


def make_folder(folder: Path) -> Path:
    """Six 64x64 images, each with `zorbo.txt`-style caption file beside it."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i, (dx, dy, r) in enumerate(PLACES):
        image = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(image)
        x, y = 32 + dx, 32 + dy
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 140, 0))
        draw.ellipse([x - r + 5, y - r + 5, x + r - 5, y + r - 5], fill=(20, 60, 230))
        image.save(folder / f"zorbo{i}.png")
        (folder / f"zorbo{i}.txt").write_text(CAPTION)
    return folder


def _small(image) -> np.ndarray:
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((32, 32), Image.BOX), dtype=np.float64) / 255  # (32, 32, 3)


def distance(images, folder: Path) -> float:
    """Mean over `images` of the squared pixel distance (32x32, 0-1) to the nearest training image."""
    from PIL import Image

    train = np.stack([_small(Image.open(p)) for p in sorted(folder.glob("*.png"))])  # (N, 32, 32, 3)
    return float(np.mean([((train - _small(im)) ** 2).mean(axis=(1, 2, 3)).min() for im in images]))


def blue_share(images) -> float:
    """The share of pixels that are the disc's blue (blue channel high, red low)."""
    a = np.stack([np.asarray(im.convert("RGB"), dtype=np.int16) for im in images])
    return float(((a[..., 2] > 150) & (a[..., 0] < 100)).mean())
