"""Apply the unseen-token rule (`unseen.py`) to a model folder trained from scratch before the rule existed.

    python -m sdplay.training.apply_unseen --model FOLDER [--data FILE] [--augment 48] [--seed 0]

The captions of its training run are made again from the data, the augmentation count and the seed (the same
for a seed), and every token embedding row none of them uses becomes the mean of the distractor words' rows,
as `sdplay train` now does when it exports a new model. Applying it twice changes nothing more.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sdplay.training import unseen


def training_tokens(cfg, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded ids of every caption a new-model run of `cfg` trains on, the ids of its distractor words)."""
    from sdplay.training import data as datasets
    from sdplay.training.loop import caption_variants, distractors, tokenize

    data = datasets.load_set(cfg.data)
    texts = [c for v in caption_variants(cfg, data, tokenizer, True) for c in v] + [""]
    return tokenize(tokenizer, texts), unseen.word_ids(tokenizer, distractors(cfg, data, tokenizer))


def apply_to_folder(folder: Path, cfg) -> int:
    """Rewrite the token embedding of `folder`'s text encoder by the rule; the number of rows set."""
    from safetensors.torch import load_file, save_file

    from sdplay.errors import ModelNotAvailable
    from sdplay.training.export import check_folder, load_tokenizer

    check_folder(folder)
    path = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(path) if path.is_file() else {}
    key = next((k for k in tensors if k.endswith(unseen.EMBEDDING_SUFFIX)), None)
    if key is None:
        raise ModelNotAvailable(
            f"{path} is missing or holds no token embedding.",
            hint="Pass the folder `sdplay train` wrote (text_encoder/model.safetensors).",
        )
    tokens, neutral = training_tokens(cfg, load_tokenizer(folder / "tokenizer"))
    weight = tensors[key]
    changed = unseen.neutralise(weight, unseen.seen_mask(tokens, weight.shape[0]), neutral)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    tmp.replace(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    from sdplay.errors import SdplayError
    from sdplay.training.config import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m sdplay.training.apply_unseen", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="the diffusers folder of a model trained from scratch"
    )
    parser.add_argument("--data", type=Path, default=None, help="the .npz set it was trained on (default: the cache)")
    parser.add_argument("--augment", type=int, default=48, help="phrasings per image of that run")
    parser.add_argument("--seed", type=int, default=0, help="the seed of that run")
    args = parser.parse_args(argv)
    try:
        changed = apply_to_folder(args.model, TrainConfig(data=args.data, augment=args.augment, seed=args.seed))
    except SdplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.model}: {changed} token embedding rows that no training caption uses now read as its distractor words"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
