"""The held-out prompts: everyday phrasings the model is evaluated on and never trained on.

Three parts, each a fixed function of the emoji set (`python -m sdplay.training.heldout` rewrites
`heldout.tsv`, which the evaluation reads and the repository keeps):

1. **everyday**: short requests written by hand as a new user types them ("a cat", "a shiny red apple",
   "the moon"), each with the emoji that answer it;
2. **synonym**: words that are in none of the target's names ("kitten", "puppy", "automobile");
3. **templated**: an even spread of emoji, each name wrapped in a phrasing template and an adjective
   from lists that share no word with the training augmentation (`captions.TRAINING_WORDS`).

A prompt is answered by its listed emoji and by any emoji drawn with the same picture (flags of one
country under two names). No held-out prompt is a training caption (the builder checks).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILE = Path(__file__).with_name("heldout.tsv")
HELDOUT_TEMPLATES = (
    "draw {}", "{} sticker", "{} clipart", "show me {}", "{} on a plain background", "cartoon {}",
    "{} illustration", "please make {}", "i want {}", "{}, vector art", "my favourite {}", "{} please",
    "{} graphic", "render {}", "{} logo", "create {}",
)  # fmt: skip
HELDOUT_ADJECTIVES = ("", "", "", "little ", "cute ", "nice ", "pretty ", "lovely ", "huge ", "glossy ")
HELDOUT_WORDS = frozenset(w for t in (*HELDOUT_TEMPLATES, *HELDOUT_ADJECTIVES) for w in re.findall(r"[a-z]+", t))

EVERYDAY = (
    ("a cat", "cat face|cat"), ("a dog", "dog face|dog"), ("a blue heart", "blue heart"),
    ("a shiny red apple", "red apple"), ("a green apple", "green apple"), ("a red heart", "red heart"),
    ("a green heart", "green heart"), ("a yellow heart", "yellow heart"), ("a purple heart", "purple heart"),
    ("an orange heart", "orange heart"), ("a black heart", "black heart"), ("a white heart", "white heart"),
    ("a broken heart", "broken heart"), ("the moon", "full moon|crescent moon|first quarter moon"),
    ("the sun", "sun|sun with face"), ("a slice of pizza", "pizza"), ("a birthday cake", "birthday cake"),
    ("a banana", "banana"), ("some grapes", "grapes"), ("a strawberry", "strawberry"), ("a lemon", "lemon"),
    ("a pineapple", "pineapple"), ("a watermelon", "watermelon"), ("a cherry", "cherries"),
    ("a peach", "peach"), ("a carrot", "carrot"), ("a tomato", "tomato"), ("an avocado", "avocado"),
    ("a hamburger", "hamburger"), ("a burger", "hamburger"), ("some french fries", "french fries"),
    ("a hot dog", "hot dog"), ("a taco", "taco"), ("a donut", "doughnut"), ("a cookie", "cookie"),
    ("a bowl of ice cream", "ice cream|soft ice cream"), ("a cup of coffee", "hot beverage"), ("a beer", "beer mug"),
    ("a glass of wine", "wine glass"), ("a rocket", "rocket"), ("a car", "automobile|oncoming automobile"),
    ("a red car", "automobile|oncoming automobile"), ("a bicycle", "bicycle"), ("a bike", "bicycle"),
    ("an airplane", "airplane|small airplane"), ("a train", "train|locomotive|high-speed train"),
    ("a bus", "bus|oncoming bus"), ("a police car", "police car|oncoming police car"),
    ("a ship", "ship|passenger ship"), ("a sailboat", "sailboat"), ("a tree", "deciduous tree|evergreen tree"),
    ("a palm tree", "palm tree"), ("a christmas tree", "christmas tree"), ("a cactus", "cactus"),
    ("a rose", "rose"), ("a sunflower", "sunflower"), ("a tulip", "tulip"), ("a mushroom", "mushroom"),
    ("a four leaf clover", "four leaf clover"), ("a maple leaf", "maple leaf"), ("a fire", "fire"),
    ("a snowflake", "snowflake"), ("a snowman", "snowman|snowman without snow"), ("a rainbow", "rainbow"),
    ("a lightning bolt", "high voltage"), ("a cloud", "cloud"), ("an umbrella", "umbrella|umbrella with rain drops"),
    ("a star", "star|glowing star"), ("a ghost", "ghost"), ("an alien", "alien|alien monster"),
    ("a robot", "robot"), ("a skull", "skull"), ("a clown", "clown face"), ("a unicorn", "unicorn"),
    ("a dragon", "dragon|dragon face"), ("a dinosaur", "t-rex|sauropod"), ("an octopus", "octopus"),
    ("a fish", "fish|tropical fish"), ("a shark", "shark"), ("a whale", "whale|spouting whale"),
    ("a dolphin", "dolphin"), ("a turtle", "turtle"), ("a snake", "snake"), ("a frog", "frog"),
    ("a penguin", "penguin"), ("an owl", "owl"), ("a chicken", "chicken|rooster"), ("a pig", "pig face|pig"),
    ("a cow", "cow face|cow"), ("a horse", "horse|horse face"), ("a monkey", "monkey|monkey face"),
    ("a lion", "lion"), ("a tiger", "tiger|tiger face"), ("a fox", "fox"), ("a panda", "panda"),
    ("a bear", "bear"), ("a rabbit", "rabbit|rabbit face"), ("a mouse", "mouse|mouse face"),
    ("an elephant", "elephant"), ("a giraffe", "giraffe"), ("a butterfly", "butterfly"), ("a bee", "honeybee"),
    ("a spider", "spider"), ("a snail", "snail"), ("a crab", "crab"), ("a football", "soccer ball|american football"),
    ("a basketball", "basketball"), ("a tennis ball", "tennis"), ("a trophy", "trophy"), ("a guitar", "guitar"),
    ("a violin", "violin"), ("a drum", "drum"), ("a pair of headphones", "headphone"), ("a microphone", "microphone"),
    ("a phone", "mobile phone|telephone"), ("a laptop", "laptop"), ("a camera", "camera|camera with flash"),
    ("a tv", "television"), ("a light bulb", "light bulb"), ("a book", "closed book|open book|books"),
    ("a pencil", "pencil"), ("a pair of scissors", "scissors"), ("a key", "key|old key"), ("a lock", "locked"),
    ("a hammer", "hammer"), ("a bomb", "bomb"), ("a gift", "wrapped gift"), ("a balloon", "balloon"),
    ("a crown", "crown"), ("a diamond ring", "ring"), ("a gem", "gem stone"), ("a pair of sunglasses", "sunglasses"),
    ("a t shirt", "t-shirt"), ("a house", "house|house with garden"), ("a castle", "castle|japanese castle"),
    ("a volcano", "volcano"), ("a mountain", "mountain|snow-capped mountain"), ("the earth", (
        "globe showing europe-africa|globe showing americas|globe showing asia-australia")),
    ("a clock", "alarm clock|mantelpiece clock"), ("an hourglass", "hourglass done|hourglass not done"),
    ("a thumbs up", "thumbs up"), ("a thumbs down", "thumbs down"), ("a smiley face", (
        "grinning face|smiling face with smiling eyes|slightly smiling face|smiling face")),
    ("a laughing face", "face with tears of joy|rolling on the floor laughing|grinning squinting face"),
    ("a crying face", "loudly crying face|crying face"), ("an angry face", "angry face|enraged face"),
    ("a winking face", "winking face"), ("a face with sunglasses", "smiling face with sunglasses"),
    ("a face in love", "smiling face with heart-eyes|smiling face with hearts"),
    ("a sleeping face", "sleeping face"), ("a pile of poop", "pile of poo"), ("a check mark", (
        "check mark|check mark button|check box with check")), ("a red cross", "cross mark"),
    ("a question mark", "red question mark|white question mark"), ("a stop sign", "stop sign"),
    ("the japanese flag", "japan flag"), ("the flag of france", "france flag"),
    ("the american flag", "united states flag"), ("a rainbow flag", "rainbow flag"),
    ("a pirate flag", "pirate flag"), ("a red circle", "red circle"), ("a blue square", "blue square"),
)  # fmt: skip
SYNONYMS = (
    ("a kitten", "cat face|cat"), ("a kitty", "cat face|cat"), ("a puppy", "dog face|dog"),
    ("a doggy", "dog face|dog"), ("an automobile", "automobile|oncoming automobile"), ("a sedan", (
        "automobile|oncoming automobile")), ("a bunny", "rabbit|rabbit face"), ("a pony", "horse|horse face"),
    ("a kitty cat", "cat face|cat"), ("a jet plane", "airplane|small airplane"), ("a spaceship", (
        "rocket|flying saucer")), ("a ufo", "flying saucer"), ("a cellphone", "mobile phone"),
    ("a smartphone", "mobile phone"), ("a notebook computer", "laptop"), ("a pup", "dog face|dog"),
    ("a happy face", "grinning face|smiling face with smiling eyes|slightly smiling face|smiling face"),
    ("a sad face", "crying face|disappointed face|frowning face|pensive face|slightly frowning face"),
    ("a flame", "fire"), ("a blaze", "fire"), ("a love heart", "red heart"), ("a puppy face", "dog face"),
    ("a cupcake", "cupcake"), ("a muffin", "cupcake"), ("a present", "wrapped gift"), ("a soccer ball", (
        "soccer ball")), ("a moon", "full moon|crescent moon|first quarter moon"), ("a bolt of lightning", (
        "high voltage")), ("a film camera", "movie camera|camera"), ("a garbage can", "wastebasket"),
)  # fmt: skip
N_TEMPLATED = 160


@dataclass(frozen=True)
class Prompt:
    """One held-out prompt, the emoji captions that answer it, and which part of the set it is from."""

    prompt: str
    targets: tuple[str, ...]
    kind: str  # everyday, synonym, templated
    category: str


def build(data) -> list[Prompt]:
    """The held-out prompts for the emoji set `data` (a CaptionedImages), checked against its captions."""
    from sdplay.training.features import eval_indices

    category = dict(zip(data.captions, data.categories or [""] * len(data), strict=True))
    out = [Prompt(p, tuple(t.split("|")), kind, category.get(t.split("|")[0], ""))
           for part, kind in ((EVERYDAY, "everyday"), (SYNONYMS, "synonym")) for p, t in part]  # fmt: skip
    for j, i in enumerate(eval_indices(data, N_TEMPLATED)):
        name = data.captions[i]
        adjective = HELDOUT_ADJECTIVES[(7 * j) % len(HELDOUT_ADJECTIVES)]
        template = HELDOUT_TEMPLATES[j % len(HELDOUT_TEMPLATES)]
        article = j % 3 and not template.startswith(("my ", "cartoon "))
        phrase = re.sub(r"\ba ([aeiou])", r"an \1", f"a {adjective}{name}") if article else f"{adjective}{name}"
        text = template.format(phrase)
        out.append(Prompt(text, (name,), "templated", category.get(name, "")))
    _check(out, data)
    return out


def _check(prompts: list[Prompt], data) -> None:
    known = set(data.captions)
    training = {c for v in data.variants for c in v}
    problems = [f"{p.prompt!r}: no emoji named {[t for t in p.targets if t not in known]}"
                for p in prompts if any(t not in known for t in p.targets)]  # fmt: skip
    problems += [f"{p.prompt!r} is a training caption" for p in prompts if p.prompt in training]
    if problems:
        raise ValueError("held-out prompts: " + "; ".join(problems))
    texts = [p.prompt for p in prompts]
    if len(set(texts)) != len(texts):
        raise ValueError("held-out prompts repeat")


def twins(data, threshold: float = 2e-3) -> dict[str, set[str]]:
    """Captions of emoji drawn with (nearly) the same picture: mean squared pixel difference below `threshold`."""
    from sdplay.training.features import features

    f = features(data.images)
    sq = (f * f).sum(1)
    d = (sq[:, None] - 2 * f @ f.T + sq[None, :]) / f.shape[1]
    out: dict[str, set[str]] = {}
    for a, b in zip(*np.nonzero(d < threshold), strict=True):
        if a != b:
            out.setdefault(data.captions[a], set()).add(data.captions[b])
    return out


def save(prompts: list[Prompt], path: Path = FILE) -> Path:
    lines = ["prompt\ttargets\tkind\tcategory"]
    lines += [f"{p.prompt}\t{'|'.join(p.targets)}\t{p.kind}\t{p.category}" for p in prompts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(path: Path = FILE) -> list[Prompt]:
    """The held-out prompts as the repository keeps them."""
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [Prompt(p, tuple(t.split("|")), k, c) for p, t, k, c in (r.split("\t") for r in rows if r)]


def prompt_words(path: Path = FILE) -> frozenset[str]:
    """Every word of the held-out prompts (kept out of the random extra words of training)."""
    words = {w for p in load(path) for w in re.findall(r"[a-z]+", p.prompt.lower())} if path.is_file() else set()
    return frozenset(words) | HELDOUT_WORDS


def main(argv: list[str] | None = None) -> int:
    """Command line: rebuild the held-out prompt file from the emoji set."""
    from sdplay.training.data import load_set

    parser = argparse.ArgumentParser(prog="python -m sdplay.training.heldout", description=main.__doc__)
    parser.add_argument("--data", type=Path, default=None, help="the .npz set (default: the emoji cache)")
    parser.add_argument("--out", type=Path, default=FILE)
    args = parser.parse_args(argv)
    prompts = build(load_set(args.data))
    kinds = {k: sum(p.kind == k for p in prompts) for k in ("everyday", "synonym", "templated")}
    print(f"{save(prompts, args.out)}: {len(prompts)} prompts {kinds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
