"""Derive CLIP's vocab.json / merges.txt from open-clip's MIT-licensed BPE file.

Usage: python tools/build_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz OUT_DIR

The output is byte-identical to the tokenizer files published with the seed models
(checked by tests/unit/test_tokenizer_asset.py when ../shared is present).
"""

import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=False))


def build(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merge lines) exactly as CLIP's SimpleTokenizer builds them."""
    with gzip.open(bpe_gz) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def main() -> None:
    bpe_gz, out = Path(sys.argv[1]), Path(sys.argv[2])
    vocab, merges = build(bpe_gz)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
