"""Tiny random-weight models in the real layouts of the seed repositories, shrunk for CPU tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"
ASSET_CONFIGS = ROOT / "src" / "sdplay" / "assets" / "configs"
TOKENIZER = ROOT / "src" / "sdplay" / "assets" / "clip_tokenizer"
SEED_FOLDERS = {"sd1": "sd-v1-4", "sd2": "sd-v2-1", "sdxl": "sdxl-base-1.0"}


def seed_layout(family: str) -> Path:
    """The published layout of a seed model: ../shared when present, else the copy in the package."""
    name = SEED_FOLDERS[family]
    return SHARED_MODELS / name if (SHARED_MODELS / name).is_dir() else ASSET_CONFIGS / name


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _shrink_text(cfg: dict, hidden: int, projection: int | None = None) -> dict:
    cfg = dict(cfg, hidden_size=hidden, intermediate_size=hidden * 2, num_attention_heads=2, num_hidden_layers=2)
    cfg["dtype"] = cfg["torch_dtype"] = "float32"  # the seed configs say fp16 for SDXL's second encoder
    if projection is not None:
        cfg["projection_dim"] = projection
    return cfg


def _shrink_unet(cfg: dict, family: str) -> dict:
    cfg = dict(
        cfg,
        block_out_channels=[32, 64],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        sample_size=8,
        norm_num_groups=8,
    )
    if family == "sdxl":
        cfg |= {"cross_attention_dim": 64, "attention_head_dim": [2, 4], "transformer_layers_per_block": [1, 1],
                "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32}  # fmt: skip
    elif family == "sd2":
        cfg |= {"cross_attention_dim": 32, "attention_head_dim": [2, 4]}
    else:
        cfg |= {"cross_attention_dim": 32, "attention_head_dim": 4}
    return cfg


def _shrink_vae(cfg: dict) -> dict:
    blocks = len(cfg["block_out_channels"])
    return dict(cfg, block_out_channels=[8] * blocks, layers_per_block=1, norm_num_groups=4, sample_size=64)


def make_tiny_folder(family: str, out: Path, seed: int = 0) -> Path:
    """Write a complete diffusers folder (configs + safetensors weights) with tiny random components."""
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    src = seed_layout(family)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("vae_*", "*.bin", "*.safetensors"), dirs_exist_ok=True)
    for tok in out.glob("tokenizer*"):
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(TOKENIZER / name, tok / name)
    torch.manual_seed(seed)
    index = _json(out / "model_index.json")
    parts = {
        "unet": UNet2DConditionModel.from_config(_shrink_unet(_json(src / "unet/config.json"), family)),
        "vae": AutoencoderKL.from_config(_shrink_vae(_json(src / "vae/config.json"))),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**_shrink_text(_json(src / "text_encoder/config.json"), 32))),
    }
    if family == "sdxl":
        cfg = _shrink_text(_json(src / "text_encoder_2/config.json"), 32, projection=32)
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    for name, module in parts.items():
        module.save_pretrained(out / name, safe_serialization=True)
    for extra in ("safety_checker", "feature_extractor"):
        shutil.rmtree(out / extra, ignore_errors=True)
        if extra in index:
            index[extra] = [None, None]
    if family != "sdxl":
        index["requires_safety_checker"] = False
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    DiffusionPipeline.from_pretrained(out, local_files_only=True)  # the folder must load as published ones do
    return out


def _sgm_name(path: str, layers_per_block: int) -> str:
    """A diffusers UNet module path in the original (SGM) block numbering that kohya uses for SDXL."""
    parts = path.split(".")
    if parts[0] == "down_blocks":
        block, kind, layer = int(parts[1]), parts[2], int(parts[3])
        index = 1 + block * (layers_per_block + 1) + layer
        return ".".join(["input_blocks", str(index), "1" if kind == "attentions" else "0", *parts[4:]])
    if parts[0] == "up_blocks":
        block, kind, layer = int(parts[1]), parts[2], int(parts[3])
        index = block * (layers_per_block + 2) + layer
        return ".".join(["output_blocks", str(index), "1" if kind == "attentions" else "0", *parts[4:]])
    if parts[0] == "mid_block":
        return ".".join(["middle_block", "1", *parts[3:]])
    return path


def make_kohya_lora(folder: Path, out: Path, rank: int = 4, scale: float = 0.5, seed: int = 1) -> Path:
    """A LoRA .safetensors in kohya's key layout (lora_unet_… / lora_te_… or lora_te1_/lora_te2_…, lora_down,
    lora_up, alpha) for the tiny model in `folder`: attention projections of the UNet and the text encoders."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    index = _json(folder / "model_index.json")
    sdxl = "text_encoder_2" in index
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(prefix: str, linear: torch.nn.Linear) -> None:
        down = torch.randn(rank, linear.in_features, generator=gen) * scale
        up = torch.randn(linear.out_features, rank, generator=gen) * scale
        tensors[f"{prefix}.lora_down.weight"] = down
        tensors[f"{prefix}.lora_up.weight"] = up
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))

    with torch.device("meta"):  # names and shapes only: a weightless config folder (full size) works too
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    lpb = unet.config.layers_per_block
    for path, module in unet.named_modules():
        if (
            isinstance(module, torch.nn.Linear)
            and ".attn" in path
            and path.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")
        ):
            name = _sgm_name(path, lpb) if sdxl else path
            add("lora_unet_" + name.replace(".", "_"), module)
    encoders = [("text_encoder", "lora_te1" if sdxl else "lora_te")] + (
        [("text_encoder_2", "lora_te2")] if sdxl else []
    )
    for sub, prefix in encoders:
        with torch.device("meta"):
            encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / sub))
        for path, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and "self_attn" in path:
                path = path if path.startswith("text_model.") else "text_model." + path  # the original module tree
                add(f"{prefix}_" + path.replace(".", "_"), module)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out


def text_widths(folder: Path) -> list[int]:
    """The hidden size of each text encoder of a model folder (SDXL: two)."""
    return [_json(folder / sub / "config.json")["hidden_size"] for sub in ("text_encoder", "text_encoder_2")
            if (folder / sub / "config.json").is_file()]  # fmt: skip


def embedding_vectors(folder: Path, count: int = 2, seed: int = 3, scale: float = 1.0) -> list[torch.Tensor]:
    """Random textual-inversion vectors for the text encoders of `folder`: one (count, width) tensor each."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(count, w, generator=gen) * scale for w in text_widths(folder)]


def make_embedding(folder: Path, out: Path, count: int = 2, seed: int = 3, scale: float = 1.0, fmt: str = "") -> Path:
    """A textual-inversion file for the model in `folder`: SDXL's clip_l/clip_g, else `fmt` = "emb_params"
    (.safetensors, the default), "a1111" (.pt with string_to_param) or "diffusers" (.bin, {"<token>": tensor})."""
    from safetensors.torch import save_file

    vectors = embedding_vectors(folder, count, seed, scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(vectors) == 2:
        save_file({"clip_l": vectors[0], "clip_g": vectors[1]}, str(out))
    elif fmt == "a1111":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors[0]}, "name": out.stem,
                    "step": 500, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "tiny"}, str(out))  # fmt: skip
    elif fmt == "diffusers":
        torch.save({f"<{out.stem}>": vectors[0][0]}, str(out))
    else:
        save_file({"emb_params": vectors[0]}, str(out))
    return out


def random_vae(folder: Path, seed: int = 5):
    """A VAE of the architecture of `folder`'s, with other random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))


def make_vae_file(folder: Path, out: Path, seed: int = 5) -> Path:
    """A stand-alone VAE .safetensors in the original layout (encoder.down.0…, as A1111's VAE files are)."""
    from safetensors.torch import save_file
    from singlefile import VAE_PREFIX, vae_to_original

    vae = random_vae(folder, seed)
    state = vae_to_original(vae.state_dict(), dict(vae.config))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k.removeprefix(VAE_PREFIX): v.contiguous() for k, v in state.items()}, str(out))
    return out


def make_vae_folder(folder: Path, out: Path, seed: int = 6) -> Path:
    """A diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors) for the model in `folder`."""
    random_vae(folder, seed).save_pretrained(out, safe_serialization=True)
    return out
