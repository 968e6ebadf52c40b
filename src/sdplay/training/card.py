"""The model card (README.md) written into the emoji model folder: data, licences, how it was trained."""

from __future__ import annotations

from typing import Any

LICENCES = """\
## Licences

- **Weights**: Apache-2.0, like sdplay. They were trained on the images below and are a derivative of them.
- **Training images**: Noto Emoji by Google, from the npm package `emoji-datasource-google` v16
  (`img/google/64/`), Apache License 2.0 (https://github.com/googlefonts/noto-emoji/blob/main/LICENSE).
- **Emoji names, short names and categories**: `emoji.json` of `emoji-datasource-google` v16
  (iamcal/emoji-data), MIT License, Copyright (c) 2013 Cal Henderson.
- **CLDR names** ("red heart", "grinning face with big eyes"): the Python package `emoji` 2.x,
  New BSD License, Copyright (c) 2014-2026 Taehoon Kim, Kevin Wurster; derived from Unicode CLDR data
  (Unicode License v3).
- **Keywords** (training-caption augmentation and `vocabulary.txt`): the npm package `emojilib` v4
  (`dist/emoji-en-US.json`), MIT License, Copyright (c) 2014 Mu-An Chiou; and the npm package
  `cldr-annotations-full` v48 (`annotations/en/annotations.json`), Unicode CLDR data, Unicode License v3
  (https://www.unicode.org/license.txt), Copyright (c) 2004-2026 Unicode, Inc.
- **Tokenizer** (`tokenizer/vocab.json`, `tokenizer/merges.txt`): OpenAI CLIP's BPE vocabulary, MIT License,
  Copyright (c) 2021 OpenAI.
"""


def card(config: dict[str, Any], vae_steps: int, steps: int, loss: float) -> str:
    """README.md for a model trained from scratch by `sdplay train`."""
    arch = config.get("arch", {})
    return f"""# sdplay-emoji

A small text-to-image model trained by `sdplay train` (sdplay ships one as its default): 64x64 emoji
from a prompt such as "a cat", "a shiny red apple" or "grinning face with big eyes", small enough to run
offline on a CPU. It knows the words of emoji names and keywords (`vocabulary.txt`), not general English.
It is a standard diffusers `StableDiffusionPipeline` folder (CLIP text encoder, UNet2DConditionModel,
AutoencoderKL, DPM++ 2M scheduler) and loads with `StableDiffusionPipeline.from_pretrained(folder)`.

- Architecture: text encoder hidden {arch.get("text_hidden")} x {arch.get("text_layers")} layers over the
  full CLIP vocabulary; UNet channels {arch.get("unet_channels")} on {arch.get("latent_channels")}-channel
  latents; VAE channels {arch.get("vae_channels")} (64x64 pixels <-> 16x16 latents).
- Training: `sdplay train` with seed {config.get("seed")}: {vae_steps} VAE steps (batch
  {config.get("vae_batch_size")}), {_naming(config)}then {steps} UNet + text-encoder steps
  (batch {config.get("batch_size")},
  lr {config.get("lr")}, EMA {config.get("ema_decay")}), final loss {loss:.4f}. Captions: each emoji's
  names (its main name in {config.get("main_caption", 0.4):.0%} of samples; old names that contradict its
  colour, such as "heavy black heart" for the red heart, left out), plus
  {config.get("augment") if config.get("augment") is not None else 48} everyday phrasings per image made from
  its names and keywords (templates, articles, plurals, size, style and colour words, word order, unknown
  extra words; `sdplay.training.captions`). Emoji that differ only by colour (hearts, circles, squares,
  books, apples) are drawn {config.get("colour_weight", 1)}x as often as the others.
{_unseen(config)}- Weights are stored as fp16 safetensors.

{LICENCES}"""


def _naming(config: dict[str, Any]) -> str:
    """The naming stage's line of the card ("" when the run had none)."""
    steps, weight = config.get("text_steps") or 0, config.get("text_weight") or 0
    if not steps and not weight:
        return ""
    kept = f", kept on at weight {weight} while the UNet trains" if weight else ""
    return f"{steps} naming steps (the text encoder names each caption's emoji{kept}), "


def _unseen(config: dict[str, Any]) -> str:
    """The card's line on tokens no caption uses ("" when the run left them at their random start)."""
    from sdplay.training.config import TrainConfig

    if not TrainConfig.from_dict(config).neutral_unseen(new_model=True):
        return ""
    return """- Token embedding rows that no training caption uses (most of CLIP's vocabulary) are set to the mean of
  the rows of the unknown extra words the model learned to look past (`sdplay.training.unseen`): a word it
  never saw reads as one to ignore.
"""


def fine_tune_note(config: dict[str, Any], steps: int, loss: float) -> str:
    """A section appended to the base model's card by each fine-tuning run."""
    data = config.get("images") or config.get("data") or "the emoji set"
    text = "trained" if config.get("train_text_encoder", True) else "frozen"
    return f"""## Fine-tuned

`sdplay train --init {config.get("init")}` on {data}: {steps} steps (batch {config.get("batch_size")},
lr {config.get("lr")}, seed {config.get("seed")}, text encoder {text}, VAE frozen), final loss {loss:.4f}.
"""
