"""The evaluation's arithmetic: retrieval ranks, colour shares, the fixed prompt choice, the grid."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdplay.training.data import CaptionedImages
from sdplay.training.evaluate import colour_share, eval_indices, nearest, save_grid, score


def _set() -> CaptionedImages:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    captions = [f"thing {i}" for i in range(12)]
    return CaptionedImages(images, captions, [[c] for c in captions], "test", ["a"] * 6 + ["b"] * 6)


def test_training_images_retrieve_themselves_and_swaps_are_misses():
    data = _set()
    assert (nearest(data.images, data.images, k=1)[:, 0] == np.arange(12)).all()
    report = score(data.captions, data.images, data)
    assert (report.top1, report.top5) == (1.0, 1.0)
    swapped = data.images[[1, 0, *range(2, 12)]]
    report = score(data.captions, swapped, data)
    assert report.top1 == 10 / 12 and report.misses == [("thing 0", "thing 1"), ("thing 1", "thing 0")]
    assert report.per_category == {"a": 4 / 6, "b": 1.0}


def test_colour_share_counts_only_ink():
    image = np.full((64, 64, 3), 255, np.uint8)
    image[:16] = (220, 20, 20)
    image[16:24] = (20, 20, 220)
    assert colour_share(image, "red") == 16 / 24
    assert colour_share(image, "blue") == 8 / 24
    assert colour_share(np.full((8, 8, 3), 255, np.uint8), "red") == 0.0


def test_prompt_choice_is_fixed_and_spread():
    data = _set()
    assert eval_indices(data, 4) == [0, 4, 7, 11]
    assert eval_indices(data, 100) == list(range(12))


def test_grid_has_a_cell_per_image(tmp_path):
    images = np.zeros((10, 64, 64, 3), np.uint8)
    path = save_grid(images, [f"prompt {i}" for i in range(10)], tmp_path / "grid.png", cols=4)
    assert Image.open(path).size == (4 * 168, 3 * 158)
