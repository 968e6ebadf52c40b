"""Whether a model's weights are on this machine, and how to get them when they are not."""

from __future__ import annotations

from sdplay.catalog import ModelSpec

WEIGHT_FILES = ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors")


def is_available(spec: ModelSpec) -> bool:
    """True if the weights can be loaded without a network."""
    if spec.weights_dir is not None:
        return (spec.weights_dir / "model_index.json").is_file() or spec.weights_dir.is_file()
    if spec.repo_id is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(spec.repo_id, f), str) for f in WEIGHT_FILES)


def how_to_get(spec: ModelSpec) -> str:
    if spec.repo_id is None:
        return "Ships with sdplay." if is_available(spec) else "Missing from this install: reinstall sdplay."
    return (
        f"huggingface-cli download {spec.repo_id} (then it loads offline, also with HF_HUB_OFFLINE=1); "
        "or pass a local diffusers folder or .safetensors file as the model."
    )
