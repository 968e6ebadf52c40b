"""A diffusers folder -> one checkpoint in the original (CompVis / Stability) single-file layout, for tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "sd1": {"text_encoder": "cond_stage_model."},
    "sd2": {"text_encoder": "cond_stage_model.model."},
    "sdxl": {"text_encoder": "conditioner.embedders.0.", "text_encoder_2": "conditioner.embedders.1.model."},
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")

# Inner renames, diffusers name -> original name, of the blocks that need them.
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip


def _unet_blocks(cfg: dict) -> dict[str, tuple[str, dict]]:
    """diffusers module path -> (original module path, inner renames) for a UNet2DConditionModel config."""
    per = cfg["layers_per_block"]  # resnets per down block; up blocks have one more
    blocks: dict[str, tuple[str, dict]] = {k: (v, {}) for k, v in _UNET_TOP.items()}
    for b in range(len(cfg["down_block_types"])):
        for j in range(per):
            i = 1 + b * (per + 1) + j
            blocks[f"down_blocks.{b}.resnets.{j}"] = (f"input_blocks.{i}.0", _UNET_RESNET)
            blocks[f"down_blocks.{b}.attentions.{j}"] = (f"input_blocks.{i}.1", {})
        blocks[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{1 + b * (per + 1) + per}.0.op", {})
    blocks["mid_block.resnets.0"] = ("middle_block.0", _UNET_RESNET)
    blocks["mid_block.attentions.0"] = ("middle_block.1", {})
    blocks["mid_block.resnets.1"] = ("middle_block.2", _UNET_RESNET)
    for b, kind in enumerate(cfg["up_block_types"]):
        for j in range(per + 1):
            blocks[f"up_blocks.{b}.resnets.{j}"] = (f"output_blocks.{b * (per + 1) + j}.0", _UNET_RESNET)
            blocks[f"up_blocks.{b}.attentions.{j}"] = (f"output_blocks.{b * (per + 1) + j}.1", {})
        slot = 2 if kind.startswith("CrossAttn") else 1  # the upsampler follows the attention, if any
        blocks[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{b * (per + 1) + per}.{slot}.conv", {})
    return blocks


def _vae_blocks(cfg: dict) -> dict[str, tuple[str, dict]]:
    """diffusers module path -> (original module path, inner renames) for an AutoencoderKL config."""
    n, per = len(cfg["down_block_types"]), cfg["layers_per_block"]
    blocks: dict[str, tuple[str, dict]] = {}
    for coder in ("encoder", "decoder"):
        blocks[f"{coder}.conv_norm_out"] = (f"{coder}.norm_out", {})
        blocks[f"{coder}.mid_block.resnets.0"] = (f"{coder}.mid.block_1", _VAE_RESNET)
        blocks[f"{coder}.mid_block.resnets.1"] = (f"{coder}.mid.block_2", _VAE_RESNET)
        blocks[f"{coder}.mid_block.attentions.0"] = (f"{coder}.mid.attn_1", _VAE_ATTENTION)
    for i in range(n):
        for j in range(per):
            blocks[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        blocks[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", {})
        for j in range(per + 1):  # decoder blocks are numbered from the bottom in the original
            blocks[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{n - 1 - i}.block.{j}", _VAE_RESNET)
        blocks[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{n - 1 - i}.upsample.conv", {})
    return blocks


def _rename(state: dict[str, torch.Tensor], blocks: dict[str, tuple[str, dict]]) -> dict[str, torch.Tensor]:
    """Rename every key by its longest matching block path; keys outside any block keep their name."""
    out = {}
    for key, value in state.items():
        prefix = max((p for p in blocks if key.startswith(p + ".")), key=len, default=None)
        if prefix is None:
            out[key] = value
            continue
        target, inner = blocks[prefix]
        rest = key[len(prefix) + 1 :]
        for old, new in inner.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        out[f"{target}.{rest}"] = value
    return out


def unet_to_original(state: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict in the original `model.diffusion_model.*` names."""
    return {UNET_PREFIX + k: v for k, v in _rename(state, _unet_blocks(cfg)).items()}


def vae_to_original(state: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict in the original `first_stage_model.*` names (mid attention as 1x1 convs)."""
    out = {}
    for key, value in _rename(state, _vae_blocks(cfg)).items():
        if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # linear (out, in) -> conv (out, in, 1, 1)
        out[VAE_PREFIX + key] = value
    return out


def clip_to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in the original `<prefix>transformer.text_model.*` names."""
    return {f"{prefix}transformer.text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()}


def open_clip_to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in OpenCLIP names: fused q/k/v `in_proj`, `text_projection` as (in, out)."""
    sd = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd.pop("text_projection.weight").T.contiguous()  # used as x @ text_projection
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}  # fmt: skip
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)  # (3 * hidden, hidden) / (3 * hidden,)
            for old, new in names.items():
                out[f"{dst}{new}.{kind}"] = sd.pop(f"{src}{old}.{kind}")
    if sd:
        raise ValueError(f"unconverted OpenCLIP tensors: {sorted(sd)}")
    return {prefix + k: v for k, v in out.items()}


def _weights(component: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(component.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"expected one .safetensors file in {component}, found {len(files)}")
    return load_file(str(files[0]))


def original_state_dict(folder: Path, family: str) -> dict[str, torch.Tensor]:
    """All weights of a diffusers folder (UNet, VAE, text encoders) in the original single-file layout."""
    config = lambda part: json.loads((folder / part / "config.json").read_text())  # noqa: E731
    state = unet_to_original(_weights(folder / "unet"), config("unet"))
    state |= vae_to_original(_weights(folder / "vae"), config("vae"))
    for part, prefix in TEXT_PREFIXES[family].items():
        weights = _weights(folder / part)
        if prefix.endswith(".model."):
            state |= open_clip_to_original(weights, prefix)
        else:
            state |= clip_to_original(weights, prefix)
    return {k: v.contiguous() for k, v in state.items()}


def write_single_file(folder: Path, family: str, out: Path) -> Path:
    """Write the folder's weights as one original-layout .safetensors checkpoint."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_state_dict(folder, family), str(out), metadata={"format": "pt"})
    return out


def copy_configs(folder: Path, out: Path) -> Path:
    """A weightless copy of a diffusers folder: the configs a single file can be loaded with."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns(*(f"*{s}" for s in WEIGHT_SUFFIXES)))
    return out


def widen_second_text_encoder(folder: Path, hidden: int = 48, seed: int = 1) -> Path:
    """Make a tiny SDXL folder's text_encoder_2 wider than text_encoder, as in SDXL (768 and 1280 wide).

    diffusers tells the two encoders of an SDXL single file apart by width alone, so equal widths cannot load.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = json.loads((folder / "text_encoder_2" / "config.json").read_text())
    cfg |= {"hidden_size": hidden, "intermediate_size": 2 * hidden, "dtype": "float32"}  # the seed config says fp16
    encoder = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    encoder.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    first = json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_size"]
    unet_cfg = dict(UNet2DConditionModel.load_config(folder / "unet"), cross_attention_dim=first + hidden)
    UNet2DConditionModel.from_config(unet_cfg).save_pretrained(folder / "unet", safe_serialization=True)
    return folder
