"""What a training run is told (TrainConfig) and what it reports (TrainResult); device choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from sdplay.training.models import EmojiArch


@dataclass
class TrainConfig:
    """What to train on, from what, for how long; defaults are those of the shipped emoji model."""

    out: Path = Path("runs/emoji")
    data: Path | None = None  # a cached .npz set; None = the emoji set
    images: Path | None = None  # a folder of images with .txt captions (fine-tuning)
    init: str | None = None  # model to fine-tune (name or folder); None = a new emoji model
    arch: EmojiArch = field(default_factory=EmojiArch)
    steps: int = 30_000
    vae_steps: int = 4_000
    batch_size: int = 256
    vae_batch_size: int = 128
    lr: float = 5e-4
    vae_lr: float = 1e-3
    warmup: int = 500
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    main_caption: float = 0.3  # share of samples that take the image's main caption
    colour_weight: float = 3.0  # emoji that differ only by colour (hearts, circles, squares) are drawn this much more
    augment: int | None = None  # phrasings made per image (captions.py); None: 48 for a new model, 0 to fine-tune
    train_text_encoder: bool = True
    text_steps: int = 0  # steps of the naming stage: the text encoder learns to name each caption's emoji first
    text_weight: float = 0.0  # weight of that naming loss kept on during the UNet stage (0: off)
    text_lr: float = 2e-3
    text_batch_size: int = 512
    token_embedding: Path | None = None  # .npy (vocab, text_hidden) to start the token embedding from (new models)
    freeze_token_embedding: bool = False
    unseen_tokens: str = "neutral"  # new models: tokens of no caption read as the distractor words (unseen.py); "keep"
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 2_000
    max_minutes: float | None = None  # shorten the schedules (once, early) to end within this time
    progress: bool = True
    lora: bool = False  # train a LoRA on the frozen `init` model instead of fine-tuning its weights
    rank: int = 4  # LoRA rank (kohya's network_dim)
    alpha: float | None = None  # LoRA alpha (kohya's network_alpha); None = rank, a scale of 1
    lora_name: str | None = None  # the .safetensors name; None = the run folder's name

    def phrasings(self, new_model: bool) -> int:
        """Augmented phrasings per image: `augment`, else 48 for a new model and 0 when fine-tuning."""
        return self.augment if self.augment is not None else (48 if new_model else 0)

    def neutral_unseen(self, new_model: bool) -> bool:
        """Whether the export sets token rows no caption uses to the distractor words' mean (training/unseen.py):
        for a new model whose phrasings have distractors and whose token embedding is learned."""
        learned = self.train_text_encoder and not self.token_embedding
        return new_model and learned and self.unseen_tokens == "neutral" and self.phrasings(new_model) > 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out=str(self.out), data=self.data and str(self.data), images=self.images and str(self.images))
        out["token_embedding"] = self.token_embedding and str(self.token_embedding)
        out["arch"] = asdict(self.arch)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        arch = d.pop("arch", None) or {}
        arch = EmojiArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})
        paths = {k: Path(d[k]) if d.get(k) else None for k in ("out", "data", "images", "token_embedding")}
        return cls(**{**d, **paths, "arch": arch})


@dataclass
class TrainResult:
    """What a finished run produced."""

    model_dir: Path  # the model folder written; for a LoRA, the base model's folder
    steps: int
    vae_steps: int
    seconds: float
    loss: float
    parameters: dict[str, int]
    lora_file: Path | None = None  # the LoRA .safetensors written by a --lora run


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if present, else mps, else cpu; anything else as torch names it."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
