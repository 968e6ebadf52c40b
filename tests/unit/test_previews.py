"""The latent→RGB preview map, checked against the published factors by hand."""

from __future__ import annotations

import pytest
import torch

from sdplay.previews import LATENT_RGB_FACTORS, latents_to_preview, latents_to_rgb


def _expected(values: list[float]) -> list[int]:
    return [round(min(1.0, max(0.0, (v + 1) / 2)) * 255) for v in values]


@pytest.mark.parametrize("channel", range(4))
def test_one_hot_channel_gives_its_row(channel):
    latents = torch.zeros(4, 2, 3)
    latents[channel] = 1.0
    rgb = latents_to_rgb(latents, "sd1")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == torch.uint8
    assert rgb[1, 2].tolist() == _expected(list(LATENT_RGB_FACTORS["sd1"][channel]))


def test_sdxl_uses_its_own_matrix_and_bias():
    latents = torch.zeros(1, 4, 1, 1)
    latents[0, 0] = 2.0
    # row 0 of SDXL times 2, plus the SDXL bias
    expected = _expected([2 * 0.3651 + 0.1084, 2 * 0.4232 - 0.0175, 2 * 0.4341 - 0.0011])
    assert latents_to_rgb(latents, "sdxl")[0, 0].tolist() == expected
    assert latents_to_rgb(latents, "sd2")[0, 0].tolist() != expected


def test_batch_index_picks_the_right_latent_and_preview_is_upscaled():
    latents = torch.zeros(3, 4, 4, 5)
    latents[2, 3] = -1.0
    image = latents_to_preview(latents, "sd1", index=2)
    assert image.size == (40, 32) and image.mode == "RGB"
    assert image.getpixel((20, 16)) == tuple(_expected([0.2120, 0.2616, 0.7177]))
    assert latents_to_preview(latents, "sd1", index=0).getpixel((0, 0)) == (128, 128, 128)


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        latents_to_rgb(torch.zeros(3, 4, 4), "sd1")
