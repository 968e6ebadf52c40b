"""LoRA files: a folder of `.safetensors` found by name, checked, cached, and applied for one batch at a time.

kohya/A1111-format (`lora_unet_…`, `lora_te_…`, `lora_te1_/lora_te2_…`) and diffusers/peft-format files load
through diffusers' LoRA loaders into peft adapters that stay on the model; a batch activates its LoRAs with their
weights and deactivates them afterwards, so nothing leaks into the next request.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdplay.errors import InvalidRequest, ModelNotAvailable
from sdplay.prompt_syntax import LoraRef

SUFFIX = ".safetensors"
# cross-attention width -> the family a LoRA was trained for (the UNet's attn2.to_k input)
CROSS_DIM_FAMILY = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def models_home() -> Path:
    """sdplay's model folder: $SDPLAY_MODELS, else ~/.local/share/sdplay/models."""
    return Path(os.environ.get("SDPLAY_MODELS", Path.home() / ".local" / "share" / "sdplay" / "models"))


def default_folder(kind: str) -> Path:
    """The default folder of a kind of add-on, named as in A1111: Lora, embeddings, VAE."""
    return models_home() / kind


@dataclass(frozen=True)
class AddonFile:
    """A LoRA, embedding or VAE file in its folder, known by name."""

    name: str
    path: Path
    size: int
    mtime: float

    @property
    def hash(self) -> str:
        """A1111's short hash of add-on files: the first 12 hex digits of the sha256 of the tensor data."""
        return file_hash(self.path, self.size, self.mtime)

    @property
    def metadata(self) -> dict[str, Any]:
        """The file's safetensors metadata (kohya's `ss_*` training notes), JSON values decoded as A1111 does."""
        return file_metadata(self.path, self.size, self.mtime)

    @property
    def alias(self) -> str:
        """A1111's alias: the name the trainer gave it (`ss_output_name`), else the file name."""
        return str(self.metadata.get("ss_output_name") or self.name)


_HASHES: dict[tuple[str, int, float], str] = {}


def file_hash(path: Path, size: int, mtime: float) -> str:
    key = (str(path), size, mtime)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
            f.seek(8 + header)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()[:12]
    return _HASHES[key]


_METADATA: dict[tuple[str, int, float], dict[str, Any]] = {}
MAX_HEADER = 16 << 20  # a safetensors header longer than this is not read for metadata


def file_metadata(path: Path, size: int, mtime: float) -> dict[str, Any]:
    """The `__metadata__` of a .safetensors header ({} when it has none or the file is damaged)."""
    import json

    key = (str(path), size, mtime)
    if key not in _METADATA:
        found: dict[str, Any] = {}
        with suppress(OSError, ValueError, UnicodeDecodeError), open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if 0 < length <= min(MAX_HEADER, size - 8):
                header = json.loads(f.read(length))
                meta = header.get("__metadata__") if isinstance(header, dict) else None
                found = {str(k): _decoded(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
        _METADATA[key] = found
    return _METADATA[key]


def _decoded(value: Any) -> Any:
    import json

    if isinstance(value, str) and value.startswith(("{", "[")):
        with suppress(ValueError):
            return json.loads(value)
    return value


class Folder:
    """The `.safetensors` files of one folder (and its subfolders), by file name without the suffix."""

    def __init__(self, root: Path | str | None, kind: str, suffixes: tuple[str, ...] = (SUFFIX,)):
        self.root = Path(root) if root else default_folder(kind)
        self.kind = kind
        self.suffixes = suffixes
        self._files: dict[str, AddonFile] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            self._files = None

    def files(self) -> dict[str, AddonFile]:
        with self._lock:
            if self._files is None:
                self._files = self._scan()
            return self._files

    def _scan(self) -> dict[str, AddonFile]:
        if not self.root.is_dir():
            return {}
        found = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and path.suffix.lower() in self.suffixes and not path.name.startswith("."):
                stat = path.stat()
                found.setdefault(path.stem, AddonFile(path.stem, path, stat.st_size, stat.st_mtime))
        return found

    def names(self) -> list[str]:
        return sorted(self.files())

    def get(self, name: str, field: str) -> AddonFile:
        """The file of `name`; names only (never paths); an unknown name lists the close ones."""
        if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
            raise InvalidRequest(
                f"{self.kind} names are file names without folders, got {name!r}.",
                field=field,
                hint=f"Put the file in {self.root} and use its name without {SUFFIX}.",
            )
        files = self.files()
        if name not in files:
            self.refresh()  # a file added since the last look
            files = self.files()
        if name not in files:
            aliases = {f.alias: f for f in files.values() if f.alias != f.name}
            if name in aliases:  # A1111 also finds a LoRA by the name its trainer gave it
                return aliases[name]
            close = difflib.get_close_matches(name, files, n=5, cutoff=0.5)
            listed = close or sorted(files)[:10]
            raise InvalidRequest(
                f"No {self.kind} named {name!r} in {self.root}.",
                field=field,
                hint=(f"Close ones: {', '.join(listed)}." if close else f"Known: {', '.join(listed)}." if listed
                      else f"The folder has no {SUFFIX} files; put them there."),
            )  # fmt: skip
        return files[name]


# -- reading and checking a LoRA file ----------------------------------------------------------------
def read_state_dict(file: AddonFile, what: str = "LoRA") -> dict[str, Any]:
    """The tensors of a .safetensors file, refusing truncated or malformed files and NaN/Inf weights."""
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(file.path))
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise ModelNotAvailable(
            f"The {what} file {file.path.name} cannot be read: {exc}.",
            field="loras" if what == "LoRA" else what,
            hint="It is truncated or not a .safetensors file; download it again.",
        ) from exc
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelNotAvailable(
                f"The {what} file {file.path.name} holds NaN or infinite values (in {key}).",
                field="loras" if what == "LoRA" else what,
                hint="The file is damaged (or was trained into NaN); use another copy.",
            )
    if not tensors:
        raise ModelNotAvailable(f"The {what} file {file.path.name} holds no tensors.", field="loras")
    return tensors


def lora_cross_dim(tensors: dict[str, Any]) -> int | None:
    """The cross-attention width a LoRA was made for, from its attn2 key projection (kohya or peft names)."""
    for key, tensor in tensors.items():
        flat = key.replace(".", "_")
        if "attn2_to_k" in flat and ("lora_down" in flat or "lora_A" in flat) and tensor.ndim == 2:
            return int(tensor.shape[1])
    return None


def lora_is_sdxl(tensors: dict[str, Any]) -> bool:
    return any(k.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks",
                             "lora_unet_middle_block", "text_encoder_2.")) for k in tensors)  # fmt: skip


def check_lora_fits(name: str, tensors: dict[str, Any], pipe: Any, family_label: str) -> None:
    """Refuse a LoRA made for another family, saying which family it is for."""
    cross = getattr(pipe.unet.config, "cross_attention_dim", None)
    dim = lora_cross_dim(tensors)
    sdxl_model = hasattr(pipe, "text_encoder_2")
    made_for = None
    if lora_is_sdxl(tensors) != sdxl_model:
        made_for = "SDXL" if lora_is_sdxl(tensors) else CROSS_DIM_FAMILY.get(dim or 0, "SD 1.x/2.x")
    elif dim is not None and cross is not None and dim != cross:
        made_for = CROSS_DIM_FAMILY.get(dim, f"a model with cross-attention width {dim}")
    if made_for:
        raise InvalidRequest(
            f"The LoRA {name!r} is for {made_for} models; this model is {family_label}.",
            field="loras",
            hint=f"Use it with a {made_for} model, or choose a LoRA made for {family_label}.",
        )


# -- applying LoRAs to a pipeline -------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedLora:
    """A LoRA of a plan: its file and the strengths asked for."""

    file: AddonFile
    ref: LoraRef

    @property
    def adapter(self) -> str:
        """The peft adapter name: the file's hash (stable, a valid module name, one per content)."""
        return f"lora_{self.file.hash}"

    @property
    def key(self) -> tuple:
        return (self.file.hash, self.ref.weight, self.ref.text_weight)


def _loaded_adapters(pipe: Any) -> set[str]:
    return pipe.__dict__.setdefault("sdplay_adapters", set())


def ensure_loaded(pipe: Any, loras: list[ResolvedLora], family_label: str) -> None:
    """Load each LoRA into the pipeline once (as a peft adapter named by its hash)."""
    have = _loaded_adapters(pipe)
    for lora in loras:
        if lora.adapter in have:
            continue
        tensors = read_state_dict(lora.file)
        check_lora_fits(lora.ref.name, tensors, pipe, family_label)
        try:
            pipe.load_lora_weights(tensors, adapter_name=lora.adapter)
        except (ValueError, KeyError, RuntimeError) as exc:
            _forget(pipe, lora.adapter)
            raise InvalidRequest(
                f"The LoRA {lora.ref.name!r} does not fit this model: {exc}",
                field="loras",
                hint=f"Choose a LoRA made for {family_label} (kohya/A1111 or diffusers format).",
            ) from exc
        have.add(lora.adapter)


def _forget(pipe: Any, adapter: str) -> None:
    with suppress(Exception):  # a half-loaded adapter may be missing from some components
        pipe.delete_adapters([adapter])


@contextmanager
def applied(pipe: Any, loras: list[ResolvedLora], family_label: str) -> Iterator[None]:
    """The pipeline with exactly `loras` active (weight 0 ones left out) for the duration of the block."""
    active = [lora for lora in loras if lora.ref.weight != 0 or lora.ref.text_weight != 0]
    if not active:
        yield
        return
    ensure_loaded(pipe, active, family_label)
    encoders = [name for name in ("text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None]
    present = pipe.get_list_adapters()  # {"unet": [adapters], "text_encoder": [...]}: a LoRA may skip a part
    parts = [{"unet": lo.ref.weight} | dict.fromkeys(encoders, lo.ref.text_weight) for lo in active]
    weights = [{k: w for k, w in p.items() if lo.adapter in present.get(k, ())}
               for lo, p in zip(active, parts, strict=True)]  # fmt: skip
    pipe.enable_lora()
    pipe.set_adapters([lo.adapter for lo in active], adapter_weights=weights)
    try:
        yield
    finally:
        pipe.disable_lora()


def infotext(loras: list[ResolvedLora]) -> str | None:
    """A1111's `Lora hashes` value: "name: hash, name: hash"."""
    if not loras:
        return None
    return ", ".join(f"{lo.ref.name}: {lo.file.hash}" for lo in loras)
