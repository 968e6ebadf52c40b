"""Which diffusers folders the light runtime builds exactly: the configs are read (no torch) and every setting
that changes what the networks compute must be one that sdplay.light.modules implements."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from sdplay.light.config import Unsupported, resolve_config

WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}  # fmt: skip
INDEX = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
         "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
         "scheduler": ["diffusers", "DPMSolverMultistepScheduler"]}  # fmt: skip
CONFIGS = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
           "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json")  # fmt: skip
_ANY_INT = ("int",)  # any integer, or a list of integers
_ANY_NUM = ("number",)  # any int or float
_ANY_BOOL = (True, False)
# UNet2DConditionModel settings: each key's allowed values.
UNET = {
    "downsample_padding": (1,), "mid_block_scale_factor": _ANY_NUM, "norm_eps": _ANY_NUM, "freq_shift": _ANY_NUM,
    "act_fn": ("silu",), "addition_embed_type": (None,), "addition_time_embed_dim": (None,),
    "attention_type": ("default",), "center_input_sample": (False,), "class_embed_type": (None,),
    "class_embeddings_concat": (False,), "conv_in_kernel": (1, 3, 5), "conv_out_kernel": (1, 3, 5),
    "cross_attention_norm": (None,), "dropout": (0.0,), "dual_cross_attention": (False,),
    "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,), "flip_sin_to_cos": _ANY_BOOL,
    "layers_per_block": _ANY_INT, "mid_block_only_cross_attention": (None, False),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",), "norm_num_groups": _ANY_INT, "num_attention_heads": (None,),
    "num_class_embeds": (None,), "only_cross_attention": (False,), "projection_class_embeddings_input_dim": (None,),
    "resnet_out_scale_factor": (1.0,), "resnet_skip_time_act": (False,), "resnet_time_scale_shift": ("default",),
    "reverse_transformer_layers_per_block": (None,), "time_cond_proj_dim": (None,),
    "time_embedding_act_fn": (None,), "time_embedding_dim": (None,), "time_embedding_type": ("positional",),
    "timestep_post_act": (None,), "transformer_layers_per_block": _ANY_INT, "upcast_attention": (False,),
    "use_linear_projection": _ANY_BOOL, "attention_head_dim": _ANY_INT, "block_out_channels": _ANY_INT,
    "cross_attention_dim": _ANY_INT, "in_channels": _ANY_INT, "out_channels": _ANY_INT,
}  # fmt: skip
VAE = {"act_fn": ("silu",), "block_out_channels": _ANY_INT, "latent_channels": _ANY_INT, "out_channels": _ANY_INT,
       "layers_per_block": _ANY_INT, "norm_num_groups": _ANY_INT, "mid_block_add_attention": _ANY_BOOL,
       "use_post_quant_conv": _ANY_BOOL}  # fmt: skip
CLIP = {"model_type": ("clip_text_model",), "hidden_act": ("quick_gelu",), "attention_dropout": (0.0,),
        "hidden_size": _ANY_INT, "intermediate_size": _ANY_INT, "num_attention_heads": _ANY_INT,
        "num_hidden_layers": _ANY_INT, "max_position_embeddings": _ANY_INT, "vocab_size": _ANY_INT}  # fmt: skip
CLIP_OPTIONAL = {"architectures": (["CLIPTextModel"],), "attn_implementation": (None, "sdpa"),
                 "_attn_implementation": (None, "sdpa")}  # fmt: skip
CLIP_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}  # fmt: skip


def check(folder: Path) -> str | None:
    """None if the light runtime builds this folder exactly as diffusers does; else what it does not cover."""
    folder = Path(folder)
    try:
        stamp = tuple((folder / name).stat().st_mtime_ns for name in CONFIGS)
    except OSError as exc:
        return f"incomplete folder ({exc.strerror})"
    return _check(folder, stamp)


@lru_cache(maxsize=16)
def _check(folder: Path, _stamp: tuple) -> str | None:
    try:
        return _reason(folder)
    except (OSError, ValueError) as exc:  # unreadable or malformed JSON: diffusers will say what is wrong
        return f"unreadable configs ({exc})"


def _reason(folder: Path) -> str | None:
    index = _json(folder / "model_index.json")
    if index.get("_class_name") != "StableDiffusionPipeline":
        return f"pipeline {index.get('_class_name')}"
    for name, entry in INDEX.items():
        if index.get(name) != entry:
            return f"{name} {index.get(name)}"
    extra = [k for k, v in index.items() if not k.startswith("_") and k not in INDEX and k != "requires_safety_checker"
             and v not in ([None, None], None)]  # fmt: skip
    if extra:
        return f"components {extra}"
    for name, file in WEIGHTS.items():
        if not (folder / name / file).is_file():
            return f"no {name}/{file}"
    unet, vae = _json(folder / "unet" / "config.json"), _json(folder / "vae" / "config.json")
    reason = (_settings("unet", unet, UNET) or _unet_blocks(unet) or _settings("vae", vae, VAE)
              or _vae_blocks(vae, unet) or _text_encoder(folder) or _tokenizer(folder / "tokenizer"))  # fmt: skip
    if reason:
        return reason
    try:
        resolve_config(_json(folder / "scheduler" / "scheduler_config.json"))
    except Unsupported as exc:
        return str(exc)
    return None


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _settings(what: str, config: dict, allowed: dict[str, tuple]) -> str | None:
    for key, values in allowed.items():
        value = config.get(key, KeyError)
        if values == _ANY_NUM:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return f"{what} {key}={value!r}"
        elif values == _ANY_INT:
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                return f"{what} {key}={value!r}"
        elif value is KeyError or value not in values:
            return f"{what} {key}={value!r}"
    return None


def _unet_blocks(u: dict) -> str | None:
    down, up, ch = u["down_block_types"], u["up_block_types"], u["block_out_channels"]
    if not (len(down) == len(up) == len(ch)) or not isinstance(u["layers_per_block"], int):
        return "unet block layout"
    if any(b not in ("CrossAttnDownBlock2D", "DownBlock2D") for b in down):
        return f"unet down blocks {down}"
    if any(b not in ("CrossAttnUpBlock2D", "UpBlock2D") for b in up):
        return f"unet up blocks {up}"
    for key in ("transformer_layers_per_block", "cross_attention_dim", "norm_num_groups"):
        if isinstance(u[key], list):
            return f"unet per-block {key}"
    heads = u["attention_head_dim"]
    if isinstance(heads, list) and len(heads) != len(ch):
        return "unet attention_head_dim"
    if u["in_channels"] != u["out_channels"]:
        return "unet in/out channels (an inpainting UNet)"
    return None


def _vae_blocks(v: dict, u: dict) -> str | None:
    if v.get("_class_name") != "AutoencoderKL" or any(b != "UpDecoderBlock2D" for b in v.get("up_block_types", [0])):
        return "vae decoder blocks"
    if v["latent_channels"] != u["in_channels"]:
        return "vae latent channels"
    return None


def _text_encoder(folder: Path) -> str | None:
    c = _json(folder / "text_encoder" / "config.json")
    reason = _settings("text encoder", c, CLIP)
    if reason:
        return reason
    for key, values in CLIP_OPTIONAL.items():
        if key in c and c[key] not in values:
            return f"text encoder {key}={c[key]!r}"
    return None


def _tokenizer(folder: Path) -> str | None:
    if (folder / "tokenizer.json").exists() or not (folder / "vocab.json").is_file():
        return "tokenizer files"
    config = _json(folder / "tokenizer_config.json")
    if config.get("tokenizer_class") != "CLIPTokenizer":
        return f"tokenizer {config.get('tokenizer_class')}"
    for key, content in CLIP_TOKENS.items():
        value = config.get(key, content)
        if (value.get("content") if isinstance(value, dict) else value) != content:
            return f"tokenizer {key}"
    return None
