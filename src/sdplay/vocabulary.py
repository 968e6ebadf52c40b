"""What a small model knows: the words of its training captions, kept beside its weights.

A model folder may hold `vocabulary.txt` (one word a line: the names and keywords it was trained on;
`sdplay train` writes it). `unknown_prompt_note` says, once, when a prompt has none of those words,
so a user learns why the picture is noise instead of guessing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

VOCABULARY_FILE = "vocabulary.txt"
_FILLER_TEXT = """a an the of on in at to with and or for from by is are be it this that my me i you please some
one two three few many very photo picture image drawing icon emoji big small large tiny shiny bright simple flat
colourful colorful draw show make want"""
FILLER = frozenset(_FILLER_TEXT.split())  # words that name no thing: a prompt of these alone is as good as empty
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """The lower-case words of a text (letters only: weights, punctuation and digits dropped)."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=8)
def _load(path: Path, mtime: float) -> frozenset[str]:
    return frozenset(w for line in path.read_text(encoding="utf-8").splitlines() for w in words(line))


def known_words(folder: Path | None) -> frozenset[str] | None:
    """The words a model folder lists in vocabulary.txt, or None when it lists none (most models)."""
    path = folder / VOCABULARY_FILE if folder else None
    if path is None or not path.is_file():
        return None
    return _load(path, path.stat().st_mtime)


def unknown_prompt_note(prompt: str, model: str | None) -> str | None:
    """A one-line note when `model` keeps a vocabulary and no word of `prompt` is in it; else None."""
    from sdplay.catalog import DEFAULT_MODEL, builtin

    spec = builtin(model or DEFAULT_MODEL)
    folder = spec.weights_dir if spec else Path(model).expanduser()  # type: ignore[arg-type]
    known = known_words(folder) if folder and folder.is_dir() else None
    content = [w for w in words(prompt) if w not in FILLER]
    if known is None or not prompt.strip() or any(w in known for w in content):
        return None
    name = spec.name if spec else "this model"
    return (
        f"{name} knows emoji names; none of the words of this prompt are in its vocabulary, "
        'so the picture will not match it. Try a thing an emoji shows, e.g. "a cat", "a red heart", "a rocket".'
    )


def write_vocabulary(folder: Path, texts: list[str]) -> Path:
    """Write the sorted content words of `texts` as `folder`/vocabulary.txt."""
    vocab = sorted({w for t in texts for w in words(t) if w not in FILLER and len(w) > 1})
    path = folder / VOCABULARY_FILE
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path
