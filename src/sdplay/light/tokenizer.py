"""CLIP's byte-level BPE tokenizer built directly on the `tokenizers` library, with the normalizer, pre-tokenizer
and special tokens transformers 5's CLIPTokenizer gives it (so the ids are the same), without importing
transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class CLIPTokenizer:
    """The calls sdplay makes on a tokenizer: `tok(text, add_special_tokens=False)["input_ids"]` and the ids of
    its special tokens; `model_max_length` tokens per chunk."""

    def __init__(self, folder: Path):
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        config = json.loads((folder / "tokenizer_config.json").read_text())
        self.model_max_length = int(config.get("model_max_length", 77))
        files = (str(folder / "vocab.json"), str(folder / "merges.txt"))
        bpe = BPE.from_file(*files, dropout=None, continuing_subword_prefix="", end_of_word_suffix="</w>",
                            fuse_unk=False, unk_token=EOS)  # fmt: skip
        tok = Tokenizer(bpe)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )  # fmt: skip
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(
            [AddedToken(BOS, normalized=True, special=True), AddedToken(EOS, normalized=False, special=True)]
        )
        self._tok = tok
        self.bos_token_id, self.eos_token_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
        self.pad_token_id = self.eos_token_id  # CLIP pads with its end token

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> dict[str, list[int]]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return {"input_ids": [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids}
