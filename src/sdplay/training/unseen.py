"""Tokens a new model never saw in training are read as the words it learned to look past.

A model trained from scratch learns a token embedding only for the tokens of its captions: every other row of
CLIP's 49,408 keeps its random start, and the UNet never learned to look past such a vector, so one unknown
word ("please", "render", "favourite") can pull a picture anywhere. Training adds random extra words (the
distractors, `captions.distractor_words`) to some phrasings, and the model learns to draw the phrase as if they
were not there. At export every row that no training caption uses becomes the mean of those distractor rows:
an unknown word then reads as one the model has learned to ignore.

`python -m sdplay.training.apply_unseen` applies the same rule to a model folder written before it existed.
"""

from __future__ import annotations

import torch

EMBEDDING_SUFFIX = "embeddings.token_embedding.weight"  # the key, with or without "text_model."


def seen_mask(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(vocab,) True for every token id in `tokens` (the padded caption ids of a run, the empty caption among them)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[tokens.reshape(-1).unique().cpu()] = True
    return mask


def word_ids(tokenizer, words: list[str]) -> torch.Tensor:
    """The token ids inside `words` (no start, end or padding tokens)."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    ids = {i for w in words for i in tokenizer(w, add_special_tokens=False).input_ids} - special
    return torch.tensor(sorted(ids), dtype=torch.long)


def neutralise(weight: torch.Tensor, seen: torch.Tensor, neutral: torch.Tensor) -> int:
    """Set the rows of `weight` not `seen` to the mean of the `neutral` rows trained on (in place); the number set.

    Only the distractor words some phrasing drew count (a small set draws few of them); with none, nothing changes.
    """
    neutral = neutral[seen[neutral]]
    if len(neutral) == 0:
        return 0
    unseen = (~seen).to(weight.device)
    with torch.no_grad():
        mean = weight[neutral.to(weight.device)].float().mean(0)
        weight[unseen] = mean.to(weight.dtype)
    return int(unseen.sum())
