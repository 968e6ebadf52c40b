"""Caption augmentation: the everyday ways people ask for an emoji, made once per run from a seed.

Each image gets a pool of phrasings built from its names, its keywords (CLDR annotations, emojilib),
its dominant colour (measured on the image) and a few templates, articles, plurals, size words and word
orders. The held-out evaluation prompts (`heldout.py`) use other templates and words; `TRAINING_WORDS`
lists every word this module can add, so a test checks the two stay apart.
"""

from __future__ import annotations

import re

import numpy as np

TEMPLATES = (
    "{}", "a {}", "the {}", "a photo of {}", "an emoji of {}", "{} icon", "{} emoji",
    "an image of {}", "a picture of {}", "a drawing of {}", "an icon of {}", "{}, emoji",
    "{} symbol", "a {} symbol", "generate {}", "paint {}", "a sketch of {}", "{} picture", "{} in emoji style",
    "this is {}", "{}, flat design", "a {} image",
)  # fmt: skip
PLURAL_TEMPLATES = ("{}", "some {}", "two {}", "three {}", "a few {}", "many {}", "photo of {}")
SIZE_WORDS = ("big", "small", "large", "tiny")
STYLE_WORDS = ("shiny", "bright", "simple", "colourful", "colorful", "flat")
COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gray")
COLOUR_ORDERS = ("{rest}, {colour}", "{rest} in {colour}", "{colour} coloured {rest}", "{colour} colored {rest}")
TRAINING_WORDS = frozenset(
    w for t in (*TEMPLATES, *PLURAL_TEMPLATES, *COLOUR_ORDERS) for w in re.findall(r"[a-z]+", t)
) - {"rest", "colour"} | frozenset(SIZE_WORDS + STYLE_WORDS + COLOUR_WORDS + ("an",))
SPECIFIC = 3  # a keyword shared by at most this many emoji can stand alone as a caption
EXTRA_WORDS = 0.3  # share of phrasings with 1-3 random words the model does not know, at either end or inside
_WORD = re.compile(r"^[a-z][a-z' -]{2,}$")


def dominant_colour(image: np.ndarray, share: float = 0.45, margin: float = 4.0) -> str | None:
    """The colour word of the hue covering at least `share` of an image's ink (non-white pixels), if any.

    Only a clear answer counts: the same word must win with every hue boundary moved `margin` degrees either
    way, and with darker reds and oranges counted as brown. Noto's yellow and orange are 9 degrees of hue
    apart, so a golden banana or a brown heart gets no colour word rather than a wrong one.
    """
    px = image.reshape(-1, 3).astype(np.float32) / 255
    ink = px[px.min(1) < 0.88]
    if len(ink) < 20:
        return None
    answers = set()
    for shift, brown in ((0.0, 0.6), (-margin, 0.6), (margin, 0.6), (0.0, 0.8)):
        names = colour_names(
            ink, shift=shift, brown=brown, brown_hues=("orange",) if brown < 0.8 else ("orange", "red")
        )
        values, counts = np.unique(names, return_counts=True)
        best = int(counts.argmax())
        answers.add(str(values[best]) if counts[best] >= share * len(ink) else None)
    return answers.pop() if len(answers) == 1 else None


def colour_names(
    rgb: np.ndarray, shift: float = 0.0, brown: float = 0.6, brown_hues: tuple[str, ...] = ("orange",)
) -> np.ndarray:
    """A colour word for each RGB pixel in [0, 1], from its hue, saturation and value.

    `shift` moves the hue boundaries (degrees); pixels of `brown_hues` darker than `brown` are brown.
    """
    mx, mn = rgb.max(1), rgb.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    r, g, b = rgb.T
    delta = np.maximum(mx - mn, 1e-6)
    hue = (
        np.select([mx == r, mx == g], [((g - b) / delta) % 6, (b - r) / delta + 2], (r - g) / delta + 4) * 60
    )  # degrees
    bins = np.array([20, 40, 70, 165, 260, 315, 340, 360]) + np.array([shift] * 7 + [0])
    words = np.array(["red", "orange", "yellow", "green", "blue", "purple", "pink", "red"])
    names = words[np.searchsorted(bins, hue, side="right").clip(0, 7)]
    names = np.where(np.isin(names, brown_hues) & (mx < brown), "brown", names)
    names = np.where(sat < 0.2, np.where(mx < 0.25, "black", np.where(mx > 0.8, "white", "grey")), names)
    return np.where((sat >= 0.2) & (mx < 0.2), "black", names)


def colour_words(text: str) -> set[str]:
    """The colour words of a text ("grey" and "gray" both)."""
    words = set(re.findall(r"[a-z]+", text)) & set(COLOUR_WORDS)
    return words | {"grey", "gray"} if words & {"grey", "gray"} else words


def consistent_names(variants: list[str], colour: str | None) -> list[str]:
    """The caption variants that name no colour but the main caption's or the image's own.

    Unicode's old names call many coloured emoji black or white ("heavy black heart" is the red heart,
    "white smiling face" the yellow one); training on them would teach colour words the opposite of
    what they mean.
    """
    own = colour_words(variants[0]) | colour_words(colour or "")
    return [v for i, v in enumerate(variants) if i == 0 or colour_words(v) <= own]


def colour_families(names: list[str]) -> list[str | None]:
    """For each main caption "<colour> <thing>", the thing when two or more colours of it exist, else None.

    These are the emoji that differ only by colour (hearts, circles, squares, books, apples): the images
    that teach the model what a colour word means.
    """
    things = [c.partition(" ")[2] if c.partition(" ")[0] in COLOUR_WORDS and " " in c else None for c in names]
    counts: dict[str, int] = {}
    for t in things:
        if t:
            counts[t] = counts.get(t, 0) + 1
    return [t if t and counts[t] >= 2 else None for t in things]


def sample_weights(names: list[str], colour_weight: float) -> np.ndarray | None:
    """How often each image is drawn, relative to the others: `colour_weight` for colour-family members.

    None when all weights are equal (no family, or a weight of 1): draw uniformly.
    """
    families = colour_families(names)
    if colour_weight == 1 or not any(families):
        return None
    return np.array([colour_weight if f else 1.0 for f in families])


def plural(phrase: str) -> str:
    """English plural of a phrase's last word ('red apple' -> 'red apples'); the phrase if it has none."""
    head, _, last = phrase.rpartition(" ")
    if not last.isalpha() or len(last) < 3 or re.search(r"[^su]s$", last):
        return phrase  # not a word, or a plural already ("cherries", "valentines")
    if re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    elif last.endswith("fe"):
        last = last[:-2] + "ves"
    else:
        last += "s"
    return f"{head} {last}".strip()


def with_article(template: str, phrase: str) -> str:
    """Fill a template; its 'a' becomes 'an' before a vowel sound."""
    text = template.format(phrase)
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def usable_keywords(keywords: list[str], main: str, colour: str | None) -> list[str]:
    """Keywords that are words (no numbers, emoticons or codes) and name no colour the image lacks."""
    own = set(main.split()) | {colour}
    return [k for k in keywords if _WORD.match(k) and (k not in COLOUR_WORDS or k in own)]


def keyword_counts(keywords: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ks in keywords:
        for k in set(ks):
            counts[k] = counts.get(k, 0) + 1
    return counts


def phrasings(
    names: list[str],
    keywords: list[str],
    counts: dict[str, int],
    colour: str | None,
    n: int,
    rng: np.random.Generator,
    distractors: list[str] | None = None,
) -> list[str]:
    """`n` captions for one image: a base phrase (name, keyword, or both), then optional changes."""
    names = [c for c in names if ", " not in c] or names[:1]
    specific = [k for k in keywords if counts.get(k, 99) <= SPECIFIC]
    out = []
    for _ in range(n):
        base = _base(names, keywords, specific, rng)
        plural_form = rng.random() < 0.2 and "," not in base and len(base.split()) <= 3
        plural_form = plural_form and base.split()[-1] not in COLOUR_WORDS  # not "heart in reds"
        if rng.random() < 0.3:
            base = _adjective(base, colour, rng)
        if plural_form:
            text = PLURAL_TEMPLATES[rng.integers(len(PLURAL_TEMPLATES))].format(plural(base))
        else:
            text = with_article(TEMPLATES[rng.integers(len(TEMPLATES))], base)
        if distractors and rng.random() < EXTRA_WORDS:
            text = _extra_words(text, distractors, rng)
        out.append(text)
    return out


def _extra_words(text: str, distractors: list[str], rng: np.random.Generator) -> str:
    """Add 1-3 words the model does not know before, after or inside a phrasing ("zebra red heart")."""
    count = 1 + int(rng.random() < 0.35) + int(rng.random() < 0.15)
    extra = [distractors[rng.integers(len(distractors))] for _ in range(count)]
    words, where = text.split(), rng.random()
    if where < 0.4:
        return " ".join(extra + words)
    if where < 0.8:
        return " ".join(words + extra)
    at = int(rng.integers(len(words) + 1))
    return " ".join(words[:at] + extra + words[at:])


def _base(names: list[str], keywords: list[str], specific: list[str], rng: np.random.Generator) -> str:
    main, roll = names[0], rng.random()
    if roll < 0.35 or not keywords:
        return names[rng.integers(len(names))] if rng.random() < 0.4 else main
    if roll < 0.55 and specific:
        return specific[rng.integers(len(specific))]
    word = keywords[rng.integers(len(keywords))]
    if roll < 0.75 and word not in main.split():
        return f"{word} {main}" if rng.random() < 0.5 else f"{main} {word}"
    if roll < 0.85 and " " in main:
        first, _, rest = main.partition(" ")
        if first in COLOUR_WORDS:  # "heart, red", "heart in red", "red coloured heart"
            return COLOUR_ORDERS[rng.integers(len(COLOUR_ORDERS))].format(rest=rest, colour=first)
        return f"{rest}, {first}"  # word order: "face, grinning"
    return f"{main}, {word}"


def _adjective(base: str, colour: str | None, rng: np.random.Generator) -> str:
    """Put a size or style word, or the image's own colour word, before the phrase."""
    if colour and not set(base.split()) & set(COLOUR_WORDS) and rng.random() < 0.5:
        return f"{colour} {base}"
    words = SIZE_WORDS + STYLE_WORDS
    return f"{words[rng.integers(len(words))]} {base}"


def distractor_words(tokenizer, exclude: frozenset[str], n: int = 4000, seed: int = 0) -> list[str]:
    """Whole-word tokens of the vocabulary, as random extra words the model learns to look past."""
    vocab = tokenizer.get_vocab()
    words = sorted(
        t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha() and len(t) >= 7
    )
    words = [w for w in words if w not in exclude]
    rng = np.random.default_rng(seed)
    return [words[i] for i in rng.choice(len(words), size=min(n, len(words)), replace=False)]


def _own_colour(image: np.ndarray, name: str) -> str | None:
    """The image's colour word, unless its name says another one (the name decides: "black heart" is drawn grey)."""
    colour, named = dominant_colour(image), colour_words(name)
    return colour if not named or colour in named else None


def augmented_variants(data, n: int, seed: int, distractors: list[str] | None = None) -> list[list[str]]:
    """Each image's caption variants followed by `n` augmented phrasings (a fixed function of `seed`)."""
    if n <= 0:
        return [list(v) for v in data.variants]
    rng = np.random.default_rng(seed)
    colours = [_own_colour(im, name) for im, name in zip(data.images, data.captions, strict=True)]
    words = data.keywords or [[] for _ in data.captions]
    keywords = [usable_keywords(k, c, col) for k, c, col in zip(words, data.captions, colours, strict=True)]
    counts = keyword_counts(keywords)
    out = []
    for i, variants in enumerate(data.variants):
        colour = colours[i]
        variants = consistent_names(list(variants), colour)
        extra = phrasings(variants, keywords[i], counts, colour, n, rng, distractors)
        out.append(variants + [c for c in dict.fromkeys(extra) if c not in variants])
    return out
