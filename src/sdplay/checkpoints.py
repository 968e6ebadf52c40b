"""Single-file checkpoints: family detection, and the pickle policy (refused unless explicitly allowed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sdplay import families
from sdplay.errors import ModelNotAvailable, UnsafeCheckpoint
from sdplay.families import Family, FamilySpec

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"  # (channels, in_channels, 3, 3)
INPAINTING_IN_CHANNELS = 9  # 4 latent + 1 mask + 4 masked-image latent channels


def tensor_names(path: Path) -> list[str]:
    """Names of the tensors in a .safetensors file, read from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:
        raise ModelNotAvailable(
            f"{path} is not a readable .safetensors checkpoint ({exc}).",
            field="model",
            hint="Check the download finished; re-download it if the size looks wrong.",
        ) from exc


def detect_family(path: Path, *, allow_pickle: bool = False) -> Family:
    """SD1, SD2 or SDXL, from the tensor names of an original-layout checkpoint (pickles only if allowed)."""
    return detect_family_spec(path, allow_pickle=allow_pickle).family


def detect_family_spec(path: Path, *, allow_pickle: bool = False) -> FamilySpec:
    """The family spec whose single-file keys the checkpoint's tensor names match."""
    return inspect_checkpoint(path, allow_pickle=allow_pickle)[0]


def inspect_checkpoint(path: Path, *, allow_pickle: bool = False) -> tuple[FamilySpec, int | None]:
    """The family of an original-layout checkpoint and its UNet's input channels (4; 9 for a dedicated
    inpainting model: latents + mask + masked-image latents; None if the file has no UNet input conv)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        state = load_pickle_state_dict(path, allow_pickle=allow_pickle)
        conv = state.get(UNET_CONV_IN)
        return _family_from_keys(list(state), path), None if conv is None or conv.ndim != 4 else int(conv.shape[1])
    if path.suffix.lower() != ".safetensors":
        raise ModelNotAvailable(
            f"{path} is not a checkpoint sdplay can read.", field="model", hint="Use a .safetensors file."
        )
    return _family_from_keys(tensor_names(path), path), unet_in_channels(path)


def unet_in_channels(path: Path) -> int | None:
    """The input channels of the UNet of an original-layout .safetensors file, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if UNET_CONV_IN not in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
            return None
        shape = f.get_slice(UNET_CONV_IN).get_shape()
    return int(shape[1]) if len(shape) == 4 else None


def _family_from_keys(keys: list[str], path: Path) -> FamilySpec:
    spec = families.from_tensor_names(keys)
    if spec is not None:
        return spec
    raise ModelNotAvailable(
        f"{path} does not look like a Stable Diffusion v1, v2 or XL checkpoint.",
        field="model",
        hint="sdplay reads the original single-file layout (model.diffusion_model.*, first_stage_model.*).",
    )


def refuse_pickle(path: Path) -> None:
    raise UnsafeCheckpoint(
        f"{path.name} is a pickle checkpoint; loading it could run code hidden in the file.",
        field="model",
        hint="Convert it to .safetensors, or pass --allow-pickle if you trust its source "
        "(it is then read with torch.load(weights_only=True)).",
    )


def load_pickle_state_dict(path: Path, *, allow_pickle: bool, only_keys: bool = False) -> dict:
    """Read a pickle checkpoint with weights_only=True, only when the user allowed it."""
    import torch

    if not allow_pickle:
        refuse_pickle(path)
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeCheckpoint(
            f"{path.name} holds more than plain tensors and was not loaded ({exc}).",
            field="model",
            hint="Convert it to .safetensors with a tool you trust.",
        ) from exc
    state = data.get("state_dict", data) if isinstance(data, dict) else {}
    return {k: (None if only_keys else v) for k, v in state.items() if isinstance(v, torch.Tensor)}


def pickle_to_safetensors(path: Path, cache_dir: Path) -> Path:
    """Convert an allowed pickle checkpoint into a cached .safetensors file and return its path."""
    from safetensors.torch import save_file

    digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir / f"{path.stem}-{digest}.safetensors"
    if not out.exists():
        state = load_pickle_state_dict(path, allow_pickle=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp))
        tmp.replace(out)
    return out
