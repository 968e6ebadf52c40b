"""VAE choice: a VAE file or diffusers VAE folder decodes (and encodes) in place of the model's own.

VAEs are named as A1111 names them (the file name with its suffix; the stem works too) and found in the VAE folder;
the library and the CLI may also give a path. A chosen VAE is loaded once per model and device (single files through
diffusers' `from_single_file` with the model's own VAE config, folders with `from_pretrained`) and swapped in for a
batch, then the model's own is put back: the rest of the model is never reloaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdplay.errors import InvalidRequest, ModelNotAvailable, UnsafeCheckpoint
from sdplay.loras import AddonFile, Folder, full_hash, load_safetensors, refuse_pickled_addon

SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
PICKLED = (".pt", ".ckpt", ".bin")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
AUTOMATIC, NONE = "automatic", "none"  # A1111's sd_vae values: the default VAE, the model's own
FIELD = "vae"


@dataclass(frozen=True)
class VaeFile(AddonFile):
    """A VAE file or diffusers VAE folder; `weights` is the file read (the folder's weights file), `size` and
    `mtime` are its own."""

    weights: Path | None = None

    @property
    def sha256(self) -> str:
        return full_hash(self.weights or self.path, self.size, self.mtime)

    @property
    def hash(self) -> str:
        """A1111's `VAE hash`: the first 10 hex digits of the file's sha256."""
        return self.sha256[:10]

    @property
    def key(self) -> tuple:
        return (str(self.path), self.size, self.mtime)


def vae_file(path: Path, name: str | None = None) -> VaeFile:
    """The VaeFile of a path: a single file, or a diffusers folder (config.json and its weights)."""
    path = Path(path).expanduser()
    weights = path
    if path.is_dir():
        weights = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None or not (path / "config.json").is_file():
            raise ModelNotAvailable(
                f"{path} is not a diffusers VAE folder.",
                field=FIELD,
                hint="A VAE folder holds config.json and diffusion_pytorch_model.safetensors; or use a single file.",
            )
    elif not path.is_file():
        raise ModelNotAvailable(f"No VAE at {path}: that path does not exist.", field=FIELD)
    elif path.suffix.lower() not in SUFFIXES:
        raise ModelNotAvailable(f"{path.name} is not a VAE file.", field=FIELD,
                                hint=f"Use a {'/'.join(SUFFIXES)} file or a diffusers VAE folder.")  # fmt: skip
    stat = weights.stat()
    return VaeFile(name or path.name, path, stat.st_size, stat.st_mtime, weights)


class VaeFolder(Folder):
    """The VAE folder: single files by their file name (with the suffix, as A1111), diffusers folders by name."""

    def __init__(self, root: Path | str | None = None):
        super().__init__(root, "VAE", SUFFIXES, folder="VAE", watch=True)

    def _scan(self) -> dict[str, VaeFile]:  # type: ignore[override]
        if not self.root.is_dir():
            return {}
        found: dict[str, VaeFile] = {}
        folders = sorted(p.parent for p in self.root.rglob("config.json") if any(
            (p.parent / n).is_file() for n in WEIGHT_NAMES) and p.parent != self.root)  # fmt: skip
        for folder in folders:
            found.setdefault(folder.name, vae_file(folder))
        for path in sorted(self.root.rglob("*")):
            inside = any(f in path.parents for f in folders)
            if path.is_file() and path.suffix.lower() in SUFFIXES and not path.name.startswith(".") and not inside:
                found.setdefault(path.name, vae_file(path))
        return found

    def _lookup(self, files: dict[str, AddonFile], name: str) -> AddonFile | None:
        if name in files:
            return files[name]
        return next((files[name + s] for s in SUFFIXES if name + s in files), None)


def is_default(name: str | None) -> bool:
    return name is None or name.strip().lower() in ("", AUTOMATIC)


def is_none(name: str | None) -> bool:
    return name is not None and name.strip().lower() == NONE


# -- loading -----------------------------------------------------------------------------------------
def load_vae(vae: VaeFile, like: Any, *, allow_pickle: bool = False) -> Any:
    """The VAE of `vae` on the device, in the dtype and with the slicing/tiling of `like` (the model's own VAE)."""
    from diffusers import AutoencoderKL

    try:
        if vae.path.is_dir():
            model = AutoencoderKL.from_pretrained(str(vae.path), local_files_only=True, dtype=like.dtype)
        else:
            state = _state_dict(vae, allow_pickle)
            config = str(_config_dir(like))
            model = AutoencoderKL.from_single_file(state, config=config, local_files_only=True, dtype=like.dtype)
    except (InvalidRequest, ModelNotAvailable, UnsafeCheckpoint):
        raise
    except Exception as exc:  # diffusers raises many kinds (shape mismatch, missing weights, bad config)
        raise InvalidRequest(
            f"The VAE {vae.name!r} does not fit this model: {str(exc).splitlines()[0] if str(exc) else exc!r}",
            field=FIELD,
            hint="Choose a VAE made for this model's family (a .safetensors VAE file or a diffusers VAE folder).",
        ) from exc
    _check(vae, model, like)
    model.to(device=like.device).eval().requires_grad_(False)
    for flag in ("use_slicing", "use_tiling"):
        if hasattr(like, flag):
            setattr(model, flag, getattr(like, flag))
    return model


def _state_dict(vae: VaeFile, allow_pickle: bool) -> dict[str, Any]:
    path = vae.path
    if path.suffix.lower() in PICKLED:
        if not allow_pickle:
            refuse_pickled_addon("VAE", path, FIELD)
        from sdplay.checkpoints import load_pickle_state_dict

        try:
            return load_pickle_state_dict(path, allow_pickle=True)
        except UnsafeCheckpoint as exc:
            hint = "It is truncated or holds more than tensors; use a .safetensors copy."
            message = f"The VAE {path.name} cannot be read: {exc.message}"
            raise ModelNotAvailable(message, field=FIELD, hint=hint) from exc
    return load_safetensors(path, "VAE", FIELD)


def _config_dir(like: Any) -> Path:
    """A folder holding the model's own VAE config (from_single_file reads the architecture from it)."""
    from sdplay.paths import cache_dir

    config = {k: v for k, v in dict(like.config).items() if not k.startswith("_")}
    text = json.dumps(config, sort_keys=True, default=str)
    out = cache_dir() / "vae-configs" / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not (out / "config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        like.save_config(str(out))
    return out


def _check(vae: VaeFile, model: Any, like: Any) -> None:
    """Refuse a VAE whose latents are not the model's (channels, downsampling) or whose weights are missing/NaN."""
    import torch

    for key in ("latent_channels", "in_channels"):
        if model.config.get(key) != like.config.get(key):
            raise InvalidRequest(
                f"The VAE {vae.name!r} has {model.config.get(key)} {key.replace('_', ' ')}; this model's has "
                f"{like.config.get(key)}.",
                field=FIELD,
                hint="Choose a VAE made for this model's family.",
            )
    if len(model.config.block_out_channels) != len(like.config.block_out_channels):
        raise InvalidRequest(f"The VAE {vae.name!r} scales images by another factor than this model's.", field=FIELD,
                             hint="Choose a VAE made for this model's family.")  # fmt: skip
    for name, param in model.named_parameters():
        if param.is_meta:
            raise InvalidRequest(f"The VAE {vae.name!r} lacks weights this model's VAE has ({name}).", field=FIELD,
                                 hint="It is for another kind of model, or incomplete.")  # fmt: skip
        if not torch.isfinite(param).all():
            raise ModelNotAvailable(f"The VAE {vae.name!r} holds NaN or infinite values (in {name}).", field=FIELD,
                                    hint="The file is damaged; use another copy.")  # fmt: skip


# -- applying ----------------------------------------------------------------------------------------
@contextmanager
def swapped(pipes: list[Any], vae: Any) -> Iterator[None]:
    """The pipelines with `vae` in place of their own for the block; task pipelines made from the first one
    meanwhile (each holds its own reference to the VAE module) get their own back too."""
    if vae is None:
        yield
        return
    base = pipes[0]
    owners = {id(p): (p, p.vae) for p in [*pipes, *base.__dict__.get("sdplay_tasks", {}).values()]}
    for pipe, _ in owners.values():
        pipe.vae = vae
    try:
        yield
    finally:
        own = owners[id(base)][1]
        for pipe in base.__dict__.get("sdplay_tasks", {}).values():
            owners.setdefault(id(pipe), (pipe, own))
        for pipe, mine in owners.values():
            if pipe.vae is vae:
                pipe.vae = mine
