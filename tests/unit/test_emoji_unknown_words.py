"""Words the embedded model never saw in training do not change what it draws.

`sdplay train` gives every token embedding row that no training caption uses the mean of the rows of the random
extra words its phrasings mixed in (`sdplay.training.unseen`), which the model learned to look past. Measured on
the shipped weights (CPU, seed 0, the defaults): adding six such words around a training caption moves the image
by at most 0.0003 (mean squared pixel difference, 0-1 scale), where two different prompts differ by about 0.11;
with the rows left at their random start (the weights before) the same words moved it by 0.002-0.17.
"""

from __future__ import annotations

import numpy as np

from sdplay.engine import Engine
from sdplay.training import unseen
from sdplay.training.export import load_tokenizer
from sdplay.types import GenerationRequest

PROMPTS = ["red heart", "cat face", "pizza", "rocket", "grinning face", "sun"]
UNKNOWN = "kindly gorgeous {} magnificent whimsical today"  # words in no caption, keyword or phrasing


def _images(prompts: list[str]) -> np.ndarray:
    engine = Engine()
    out = []
    for prompt in prompts:
        result = engine.generate(GenerationRequest(prompt, model="sdplay-emoji", seed=0, device="cpu"))
        out.append(np.asarray(result.images[0].convert("RGB"), np.float32) / 255)
    return np.stack(out)


def test_unknown_words_around_a_caption_leave_the_picture_as_it_was():
    plain, padded = _images(PROMPTS), _images([UNKNOWN.format(p) for p in PROMPTS])
    moved = ((plain - padded) ** 2).mean(axis=(1, 2, 3))
    apart = np.mean([((plain[i] - plain[j]) ** 2).mean() for i in range(len(plain)) for j in range(i)])
    assert apart > 0.05  # the prompts draw different pictures
    assert moved.max() < 0.005, dict(zip(PROMPTS, moved.round(4).tolist(), strict=True))


def test_the_unknown_words_are_one_vector_in_the_shipped_weights():
    from safetensors.torch import load_file

    from sdplay.catalog import ASSETS

    tensors = load_file(ASSETS / "sdplay-emoji" / "text_encoder" / "model.safetensors")
    weight = next(v for k, v in tensors.items() if k.endswith(unseen.EMBEDDING_SUFFIX))
    tokenizer = load_tokenizer()
    ids = [i for w in UNKNOWN.format("").split() for i in tokenizer(w, add_special_tokens=False).input_ids]
    rows = weight[ids].float()
    assert len(ids) == 5 and bool((rows == rows[0]).all())
    red = tokenizer("red", add_special_tokens=False).input_ids[0]
    assert (weight[red].float() - rows[0]).abs().max() > 0.05  # a caption word keeps its own vector
