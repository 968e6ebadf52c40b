"""The shipped emoji model draws what people type, through the Engine, on the CPU.

Generates the held-out prompts (`src/sdplay/training/heldout.tsv`: 352 everyday phrasings the model never
trained on, about 100 s on two CPU cores) plus the colour checks at the catalog's default settings and seed 0, and
checks each image's nearest training images; the full report (with 256 training captions too) is
`python -m sdplay.training.evaluate` (figures in docs/emoji-model.md).
"""

from __future__ import annotations

import json
import shutil

import pytest

from sdplay.catalog import ASSETS, builtin
from sdplay.errors import DataError
from sdplay.training import heldout
from sdplay.training.data import load_set, prepare
from sdplay.training.evaluate import evaluate
from sdplay.training.export import check_folder, folder_size

pytestmark = pytest.mark.slow
FOLDER = ASSETS / "sdplay-emoji"
N_PROMPTS = 1000  # all of heldout.tsv


@pytest.fixture(scope="module")
def emoji_set():
    """The training images (fetched with npm and cached on first use)."""
    try:
        return load_set(prepare())
    except DataError:
        if shutil.which("npm") is None:
            pytest.skip("npm is needed to fetch the emoji images for the reference set")
        raise


@pytest.fixture(scope="module")
def report(emoji_set):
    spec = builtin("sdplay-emoji")
    settings = dict(steps=spec.default_steps, guidance=spec.default_guidance, sampler=spec.default_sampler)
    result, images, prompts = evaluate(
        "sdplay-emoji", emoji_set, n=N_PROMPTS, seed=0, backend="engine", heldout=True, **settings
    )
    assert images.shape == (len(prompts), 64, 64, 3)
    return result


def test_heldout_prompts_are_drawn_as_asked(report):
    # The target of the embedded model: top-5 >= 85% on the held-out set. Measured through the Engine on the CPU:
    # 86.4% (docs/emoji-model.md); the same weights with unseen tokens left at their random start gave 77.8%.
    assert report.n == len(heldout.load()) >= 200
    assert report.top5 >= 0.85, report.misses5


COLOURED = ["red heart", "blue heart", "green heart", "yellow heart", "purple heart"]


@pytest.mark.parametrize("prompt", COLOURED)
def test_colours_follow_the_prompt(report, prompt):
    assert report.colours[prompt] >= 0.9


def test_heldout_file_is_what_the_procedure_builds_and_no_training_caption(emoji_set, tmp_path):
    rebuilt = heldout.save(heldout.build(emoji_set), tmp_path / "heldout.tsv")
    assert rebuilt.read_text() == heldout.FILE.read_text()


def test_folder_is_a_small_plain_diffusers_pipeline():
    import torch
    from diffusers import StableDiffusionPipeline

    check_folder(FOLDER)
    assert folder_size(FOLDER) < 30e6
    index = json.loads((FOLDER / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    pipe = StableDiffusionPipeline.from_pretrained(FOLDER, dtype=torch.float32, local_files_only=True)
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == builtin("sdplay-emoji").native_size
    assert pipe.tokenizer.vocab_size == 49408
    for name in ("vocab.json", "merges.txt"):
        assert (FOLDER / "tokenizer" / name).read_bytes() == (ASSETS / "clip_tokenizer" / name).read_bytes()
    licences = (FOLDER / "README.md").read_text()
    assert "Apache License 2.0" in licences and "MIT License" in licences and "Unicode License" in licences
