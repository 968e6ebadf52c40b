"""Whether a model's weights are on this machine, and how to get them when they are not."""

from __future__ import annotations

from sdplay.catalog import ASSETS, ModelSpec

WEIGHT_FILES = ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors")
# What a diffusers pipeline reads: configs, tokenizer files and the full-precision .safetensors weights, not the
# original .ckpt, .bin and fp16 copies these repositories also hold (several times the size).
DOWNLOAD_PATTERNS = ("*.json", "*.txt", "*/model.safetensors", "*/diffusion_pytorch_model.safetensors")


def is_available(spec: ModelSpec) -> bool:
    """True if the weights can be loaded without a network."""
    if spec.weights_dir is not None:
        return (spec.weights_dir / "model_index.json").is_file() or spec.weights_dir.is_file()
    if spec.repo_id is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(spec.repo_id, f), str) for f in WEIGHT_FILES)


def download_command(repo_id: str) -> str:
    """The Hugging Face CLI command (`hf`, from huggingface_hub) that fetches what sdplay loads of a repository."""
    return f"hf download {repo_id}" + "".join(f' --include "{p}"' for p in DOWNLOAD_PATTERNS)


def how_to_get(spec: ModelSpec) -> str:
    if spec.repo_id is None and spec.weights_dir is not None and not spec.weights_dir.is_relative_to(ASSETS):
        return f"Local weights at {spec.weights_dir}."
    if spec.repo_id is None:
        return "Ships with sdplay." if is_available(spec) else "Missing from this install: reinstall sdplay."
    return (
        f"`{download_command(spec.repo_id)}` (then it loads offline, also with HF_HUB_OFFLINE=1); "
        "or pass a local diffusers folder or .safetensors file as the model."
    )


def how_to_get_on_server(spec_name: str, repo_id: str | None, loadable: list[str]) -> str:
    """The same advice for a client of a server: what it can ask for now, and what the operator can add."""
    now = f"This server can load: {', '.join(loadable)} (listed at GET /api/v1/models). " if loadable else ""
    if repo_id is None:
        return now + f"{spec_name} is missing from the server's install of sdplay."
    return now + f"To add {spec_name}, the server's operator runs `{download_command(repo_id)}` on its machine."
