"""Caption augmentation, the held-out prompt set's separation from it, and the vocabulary note."""

from __future__ import annotations

import numpy as np
import pytest

from sdplay.training import captions, heldout
from sdplay.training.data import CaptionedImages


def _heart_set() -> CaptionedImages:
    red = np.full((64, 64, 3), 255, np.uint8)
    red[16:48, 16:48] = (220, 30, 40)
    blue = np.full((64, 64, 3), 255, np.uint8)
    blue[10:50, 10:50] = (30, 60, 220)
    variants = [["red heart", "heart", "red heart, smileys & emotion"], ["blue heart", "blue heart, smileys & emotion"]]
    keywords = [["emotion", "love", "black", ":)", "valentine"], ["love", "143"]]
    return CaptionedImages(np.stack([red, blue]), ["red heart", "blue heart"], variants, "test", ["s", "s"], keywords)


def test_plural_article_and_colour():
    assert [captions.plural(w) for w in ("cat", "peach", "strawberry", "knife", "red apple", "t-rex")] == [
        "cats", "peaches", "strawberries", "knives", "red apples", "t-rex",
    ]  # fmt: skip
    assert captions.with_article("a photo of {}", "a apple") == "a photo of an apple"
    assert captions.with_article("{} icon", "owl") == "owl icon"
    data = _heart_set()
    assert [captions.dominant_colour(im) for im in data.images] == ["red", "blue"]
    assert captions.dominant_colour(np.full((8, 8, 3), 255, np.uint8)) is None  # no ink


def test_augmentation_is_fixed_by_the_seed_and_keeps_colours_true():
    data = _heart_set()
    first = captions.augmented_variants(data, 40, seed=3, distractors=["zebra"])
    assert first == captions.augmented_variants(data, 40, seed=3, distractors=["zebra"])
    assert first != captions.augmented_variants(data, 40, seed=4, distractors=["zebra"])
    red, blue = first
    assert red[:3] == data.variants[0]  # the original captions first
    assert len(red) > 20 and len(set(red)) == len(red)
    assert not any("blue" in c for c in red) and not any(w in c for c in blue for w in ("red", "black"))
    assert not any(":)" in c or "143" in c for c in red + blue)  # emoticons and numbers are not words
    assert any(c.startswith(("a ", "the ")) for c in red) and any("heart" not in c for c in red)  # keywords alone
    assert captions.augmented_variants(data, 0, seed=3) == data.variants


def test_colour_words_stay_true_to_the_picture():
    data = _heart_set()
    variants = ["red heart", "heavy black heart", "heart", "red heart, heavy black heart, heart"]
    assert captions.consistent_names(variants, "red") == ["red heart", "heart"]  # Unicode's "black" for the red heart
    assert captions.consistent_names(["star", "white medium star"], "yellow") == ["star"]
    assert captions.consistent_names(["black heart", "black heart, emotion"], "grey") == [
        "black heart",
        "black heart, emotion",
    ]
    data.variants[0].insert(1, "heavy black heart")
    red = captions.augmented_variants(data, 40, seed=3)[0]
    assert "heavy black heart" not in red and not any("black" in c for c in red)

    def swatch(hue: float, sat: float = 0.8, value: float = 1.0) -> np.ndarray:
        import colorsys

        im = np.full((32, 32, 3), 255, np.uint8)
        im[4:28, 4:28] = np.array(colorsys.hsv_to_rgb(hue / 360, sat, value)) * 255
        return im

    assert captions.dominant_colour(swatch(45)) == "yellow"  # Noto's yellow heart
    assert captions.dominant_colour(swatch(35, 1.0)) == "orange"  # Noto's orange heart (255, 149, 0)
    assert captions.dominant_colour(swatch(40)) is None  # between the two: no colour word rather than a wrong one
    assert captions.dominant_colour(swatch(15, 0.54, 0.72)) is None  # Noto's brown heart: reddish, but dark


def test_colour_families_are_drawn_more_often():
    names = ["red heart", "yellow heart", "red apple", "green apple", "blue book", "cat face", "red envelope"]
    assert captions.colour_families(names) == ["heart", "heart", "apple", "apple", None, None, None]
    assert captions.sample_weights(names, 3.0).tolist() == [3, 3, 3, 3, 1, 1, 1]
    assert captions.sample_weights(names, 1.0) is None
    assert captions.sample_weights(["cat face", "dog face"], 3.0) is None


def test_extra_unknown_words_and_colour_word_orders():
    data = _heart_set()
    red = captions.augmented_variants(data, 400, seed=0, distractors=["zebra"])[0]
    with_extra = [c for c in red if "zebra" in c]
    assert 0.15 < len(with_extra) / len(red) < 0.5
    assert any(c.startswith("zebra ") for c in with_extra) and any(c.endswith(" zebra") for c in with_extra)
    assert any("zebra zebra" in c for c in with_extra)  # sometimes more than one
    assert any(c in red for c in ("heart in red", "red coloured heart", "red colored heart"))
    assert not any(c.endswith(("reds", "redses")) for c in red)
    assert captions.plural("cherries") == "cherries" and captions.plural("bus") == "buses"


def test_heldout_phrasing_shares_no_word_with_the_training_augmentation():
    assert not heldout.HELDOUT_WORDS & captions.TRAINING_WORDS - {"a", "an", "the"}  # articles are shared
    prompts = heldout.load()
    assert len(prompts) >= 200
    assert {p.kind for p in prompts} == {"everyday", "synonym", "templated"}
    assert len({p.prompt for p in prompts}) == len(prompts)
    templates = {t.split("{}")[0].strip() for t in captions.TEMPLATES if t.split("{}")[0].strip()}
    assert not any(p.prompt.startswith(t + " ") for p in prompts if p.kind == "templated" for t in templates - {"a"})


def test_distractor_words_leave_out_what_they_are_told():
    from sdplay.training.export import load_tokenizer

    words = captions.distractor_words(load_tokenizer(), frozenset({"kitten", "sticker"}), n=20000)
    assert "kitten" not in words and "sticker" not in words and len(words) == len(set(words)) > 1000
    assert all(w.isalpha() for w in words)


def test_vocabulary_note_only_for_prompts_with_no_known_word(tmp_path):
    from sdplay import vocabulary

    folder = tmp_path / "model"
    folder.mkdir()
    vocabulary.write_vocabulary(folder, ["red heart", "cat face, animals & nature", "a photo of"])
    assert (folder / "vocabulary.txt").read_text().split() == ["animals", "cat", "face", "heart", "nature", "red"]
    assert vocabulary.known_words(folder) >= {"cat", "heart"}
    assert vocabulary.known_words(tmp_path) is None  # no vocabulary.txt: never a note

    def note(prompt):
        return vocabulary.unknown_prompt_note(prompt, str(folder))

    assert note("a (cat:1.2) in a hat") is None
    assert note("") is None
    assert "none of the words" in note("quantum chromodynamics")
    assert "none of the words" in note("a photo of")  # only filler words


@pytest.mark.parametrize("prompt", ["a red heart", "a kitten"])
def test_shipped_model_knows_everyday_words(prompt):
    from sdplay.vocabulary import unknown_prompt_note

    assert unknown_prompt_note(prompt, "sdplay-emoji") is None
    assert "sdplay-emoji knows emoji names" in unknown_prompt_note("xylophonic quasar", "sdplay-emoji")
