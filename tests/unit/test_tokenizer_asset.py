"""The shipped CLIP tokenizer is byte-identical to the seed models' and derives from open-clip's BPE file."""

import hashlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "src" / "sdplay" / "assets" / "clip_tokenizer"
SHARED = ROOT.parent / "shared" / "models"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is not beside the repository")
@pytest.mark.parametrize("name", ["vocab.json", "merges.txt"])
def test_identical_to_every_seed_tokenizer(name):
    folders = sorted(SHARED.glob("*/tokenizer*"))
    assert len(folders) == 4
    assert {digest(f / name) for f in folders} == {digest(ASSET / name)}


def test_builder_reproduces_asset(tmp_path):
    import gzip
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from build_clip_tokenizer import build

    # Rebuild the BPE merges file in open-clip's format from the asset, then run the builder on it.
    lines = (ASSET / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]
    bpe = tmp_path / "bpe.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:
        f.write("\n".join(['"bpe_simple_vocab_16e6.txt#version: 0.2', *lines, "tail"]))
    vocab, merges = build(bpe)
    assert merges == lines
    import json

    assert vocab == json.loads((ASSET / "vocab.json").read_text(encoding="utf-8"))
