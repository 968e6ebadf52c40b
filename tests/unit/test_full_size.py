"""The full-size SD 1.4 architecture, built offline from the built-in config with random weights."""

import pytest

from sdplay.engine import Engine
from sdplay.types import GenerationRequest


@pytest.mark.slow
def test_full_size_sd14_generates_64px_on_cpu():
    engine = Engine(random_weights=True, max_models=1)
    res = engine.generate(GenerationRequest(prompt="a lighthouse", model="sd14", width=64, height=64, steps=1, seed=0))
    loaded, _ = engine.load("sd14")
    unet_params = sum(p.numel() for p in loaded.pipe.unet.parameters())
    assert unet_params == pytest.approx(859.5e6, rel=1e-3)  # the published UNet size
    assert loaded.pipe.tokenizer("a lighthouse").input_ids == [49406, 320, 13717, 49407]  # the real CLIP vocabulary
    assert res.images[0].size == (64, 64)
    assert res.metadata["random_weights"] is True and res.metadata["model"] == "sd-v1-4"
    engine.unload()
