"""LoRA training: peft adapters on a frozen model, exported as a kohya/A1111-format `.safetensors`.

Low-rank adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on the UNet's
attention projections (to_q, to_k, to_v, to_out.0) and, optionally, the text encoder's (q/k/v/out_proj).
The file holds kohya's keys (`lora_unet_<module>` / `lora_te_<module>` with `.lora_down.weight`,
`.lora_up.weight`, `.alpha`) and kohya's `ss_*` metadata, which A1111, ComfyUI and `sdplay.loras` read.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from sdplay.errors import InvalidRequest
from sdplay.paths import atomic_file

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "default"
SUPPORTED = "SD 1.x/2.x-style models with one text encoder: sdplay-emoji, or an SD v1/v2 diffusers folder"


def check_base(name: str, family: str) -> None:
    """Refuse a base model LoRA training does not support, saying which ones it does."""
    if family == "sdxl":
        raise InvalidRequest(
            f"{name} is an SDXL model; `sdplay train --lora` trains LoRAs for {SUPPORTED}.",
            field="init",
            hint="Use --init sdplay-emoji (or an SD 1.x/2.x folder); SDXL LoRAs need kohya's sd-scripts or similar.",
        )


def check_rank(rank: int) -> None:
    if rank < 1:
        raise InvalidRequest(f"--rank must be at least 1, got {rank}.", field="rank", hint="Try --rank 4.")


def add_adapters(unet, text_encoder, rank: int, alpha: float, with_text: bool) -> None:
    """Freeze both networks and put a rank-`rank` LoRA on their attention projections (lora_B starts at zero)."""
    from peft import LoraConfig, inject_adapter_in_model

    check_rank(rank)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(UNET_TARGETS)), unet, ADAPTER)
    if with_text:
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TEXT_TARGETS))
        inject_adapter_in_model(config, text_encoder, ADAPTER)


def parameters(unet, text_encoder) -> list[torch.nn.Parameter]:
    """The adapters' weights (the only trainable ones), in module order: UNet first."""
    return [p for m in (unet, text_encoder) for n, p in m.named_parameters() if ".lora_" in n]


def adapter_state(unet, text_encoder) -> dict[str, dict[str, torch.Tensor]]:
    """The adapters' weights by parameter name, for checkpoints."""
    out = {}
    for key, module in (("unet", unet), ("te", text_encoder)):
        out[key] = {n: p.detach().cpu().clone() for n, p in module.named_parameters() if ".lora_" in n}
    return out


@torch.no_grad()
def load_adapter_state(unet, text_encoder, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Put checkpointed adapter weights back; the names must match (same rank, same targets)."""
    for key, module in (("unet", unet), ("te", text_encoder)):
        params = {n: p for n, p in module.named_parameters() if ".lora_" in n}
        saved = state.get(key, {})
        if set(saved) != set(params):
            raise KeyError(f"{key} adapters differ: {len(saved)} saved, {len(params)} in the model")
        for name, tensor in saved.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise KeyError(f"{name} is {tuple(tensor.shape)} in the checkpoint, {tuple(params[name].shape)} here")
            params[name].copy_(tensor)


def kohya_tensors(unet, text_encoder) -> dict[str, torch.Tensor]:
    """kohya's key layout of the adapters: lora_unet_/lora_te_ + module path with '_', down/up/alpha."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("lora_unet_", unet), ("lora_te_", text_encoder)):
        for path, layer in module.named_modules():
            if not hasattr(layer, "lora_A") or ADAPTER not in layer.lora_A:
                continue
            if prefix == "lora_te_" and not path.startswith("text_model."):
                path = "text_model." + path  # kohya names CLIPTextModel's modules as transformers 4 did
            name = prefix + path.replace(".", "_")
            down = layer.lora_A[ADAPTER].weight.detach()  # (rank, in)
            up = layer.lora_B[ADAPTER].weight.detach()  # (out, rank)
            rank = down.shape[0]
            alpha = layer.scaling[ADAPTER] * rank  # peft's scaling is alpha / rank, as kohya's
            tensors[f"{name}.lora_down.weight"] = down.float().cpu().contiguous()
            tensors[f"{name}.lora_up.weight"] = up.float().cpu().contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    return tensors


def metadata(cfg: Any, *, base: str, family: str, size: int, captions: list[str], steps: int, started: float,
             loss: float) -> dict[str, str]:  # fmt: skip
    """kohya's `ss_*` training metadata (all strings), plus the SAI model-spec keys kohya writes too."""
    folder = Path(cfg.images).name if cfg.images else "data"
    tags = Counter(t.strip() for c in captions for t in c.split(",") if t.strip())
    version = {"sd2": "sd_v2"}.get(family, "sd_v1")
    name = output_name(cfg)
    now = time.time()
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": _num(alpha_of(cfg)),
        "ss_network_args": json.dumps({"targets": list(UNET_TARGETS), "text_targets": list(TEXT_TARGETS)}),
        "ss_base_model_version": version,
        "ss_v2": str(family == "sd2"),
        "ss_sd_model_name": base,
        "ss_output_name": name,
        "ss_resolution": f"({size}, {size})",
        "ss_num_train_images": str(len(captions)),
        "ss_max_train_steps": str(steps),
        "ss_steps": str(steps),
        "ss_batch_size_per_device": str(cfg.batch_size),
        "ss_learning_rate": _num(cfg.lr),
        "ss_unet_lr": _num(cfg.lr),
        "ss_text_encoder_lr": _num(cfg.lr if cfg.train_text_encoder else 0),
        "ss_network_train_unet_only": str(not cfg.train_text_encoder),
        "ss_lr_scheduler": f"cosine_with_warmup({cfg.warmup})",
        "ss_optimizer": "torch.optim.AdamW(weight_decay=0.01,betas=(0.9,0.99))",
        "ss_min_snr_gamma": "5.0",
        "ss_seed": str(cfg.seed),
        "ss_mixed_precision": "no",
        "ss_training_started_at": str(int(started)),
        "ss_training_finished_at": str(int(now)),
        "ss_tag_frequency": json.dumps({folder: dict(tags)}),
        "ss_training_comment": f"sdplay train --lora; final loss {loss:.4f}",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ("stable-diffusion-v2-768-v" if family == "sd2" else "stable-diffusion-v1") + "/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.resolution": f"{size}x{size}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)),
    }


def alpha_of(cfg: Any) -> float:
    """--alpha, else the rank (a scale alpha / rank of 1)."""
    return float(cfg.alpha) if cfg.alpha is not None else float(cfg.rank)


def _num(x: float | None) -> str:
    return "None" if x is None else format(float(x), "g")


def output_name(cfg: Any) -> str:
    """The LoRA's name (the file name without .safetensors): --name, else the run folder's name."""
    return cfg.lora_name or Path(cfg.out).resolve().name


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Write the .safetensors atomically (a stopped write leaves the previous file or none)."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path
