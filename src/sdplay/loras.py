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

from sdplay import families
from sdplay.errors import InvalidRequest, ModelNotAvailable, UnsafeCheckpoint
from sdplay.families import FamilySpec
from sdplay.prompt_syntax import LoraRef

SUFFIX = ".safetensors"


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
    def sha256(self) -> str:
        """The sha256 of the whole file (of a folder's weights file), as A1111 hashes embeddings and VAEs."""
        return full_hash(self.path, self.size, self.mtime)

    @property
    def metadata(self) -> dict[str, Any]:
        """The file's safetensors metadata (kohya's `ss_*` training notes), JSON values decoded as A1111 does."""
        return file_metadata(self.path, self.size, self.mtime)

    @property
    def alias(self) -> str:
        """A1111's alias: the name the trainer gave it (`ss_output_name`), else the file name."""
        return str(self.metadata.get("ss_output_name") or self.name)


_HASHES: dict[tuple[str, int, float], str] = {}
_FULL_HASHES: dict[tuple[str, int, float], str] = {}


def full_hash(path: Path, size: int, mtime: float) -> str:
    key = (str(path), size, mtime)
    if key not in _FULL_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FULL_HASHES[key] = digest.hexdigest()
    return _FULL_HASHES[key]


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

    def __init__(self, root: Path | str | None, kind: str, suffixes: tuple[str, ...] = (SUFFIX,), *,
                 folder: str | None = None, watch: bool = False):  # fmt: skip
        self.root = Path(root).expanduser() if root else default_folder(folder or kind)
        self.kind = kind
        self.suffixes = suffixes
        self.watch = watch  # re-read when the folder's modification time changes (a file added or removed)
        self._files: dict[str, AddonFile] | None = None
        self._stamp: int | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            self._files = None

    def files(self) -> dict[str, AddonFile]:
        with self._lock:
            stamp = self._root_stamp() if self.watch else None
            if self._files is None or stamp != self._stamp:
                self._files, self._stamp = self._scan(), stamp
            return self._files

    def _root_stamp(self) -> int | None:
        """The latest modification time of the folder and its subfolders (a file added or removed changes it)."""
        try:
            return max(os.stat(d).st_mtime_ns for d, _, _ in os.walk(self.root)) if self.root.is_dir() else None
        except (OSError, ValueError):
            return None

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
                hint=f"Put the file in {self.root} and use its name without {self.suffixes[0]}.",
            )
        found = self._lookup(self.files(), name)
        if found is None:
            self.refresh()  # a file added since the last look
            found = self._lookup(self.files(), name)
        if found is None:
            files = self.files()
            aliases = {f.alias: f for f in files.values() if f.alias != f.name}
            if name in aliases:  # A1111 also finds a LoRA by the name its trainer gave it
                return aliases[name]
            stems = {self._stem(key): key for key in files}  # "crisp.safetensors" is close to "crips"
            close = [stems[k] for k in difflib.get_close_matches(self._stem(name), stems, n=5, cutoff=0.5)]
            listed = close or sorted(files)[:10]
            kinds = "/".join(self.suffixes)
            raise InvalidRequest(
                f"No {self.kind} named {name!r} in {self.root}.",
                field=field,
                hint=(f"Close ones: {', '.join(listed)}." if close else f"Known: {', '.join(listed)}." if listed
                      else f"The folder has no {kinds} files; put them there."),
            )  # fmt: skip
        return found

    def _lookup(self, files: dict[str, AddonFile], name: str) -> AddonFile | None:
        return files.get(name)

    def _stem(self, name: str) -> str:
        suffix = Path(name).suffix
        return name[: -len(suffix)] if suffix and suffix.lower() in self.suffixes else name


# -- reading and checking a LoRA file ----------------------------------------------------------------
def refuse_pickled_addon(what: str, path: Path, field: str) -> None:
    """Refuse a pickled add-on file (an embedding or VAE) unless the user allowed pickle."""
    raise UnsafeCheckpoint(
        f"The {what} {path.name} is a pickle file; loading it could run code hidden in the file.",
        field=field,
        hint="Convert it to .safetensors, or allow pickle if you trust its source (--allow-pickle or "
        "SDPLAY_ALLOW_PICKLE=1; it is then read with torch.load(weights_only=True)).",
    )


def load_safetensors(path: Path, what: str, field: str) -> dict[str, Any]:
    """The tensors of an add-on's .safetensors file; a truncated or malformed file is a ModelNotAvailable."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise ModelNotAvailable(
            f"The {what} {path.name} cannot be read: {exc}.",
            field=field,
            hint="It is truncated or not a .safetensors file; download it again.",
        ) from exc


def read_state_dict(file: AddonFile, what: str = "LoRA") -> dict[str, Any]:
    """The tensors of a .safetensors file, refusing truncated or malformed files and NaN/Inf weights."""
    import torch

    tensors = load_safetensors(file.path, f"{what} file", "loras" if what == "LoRA" else what)
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


def check_lora_fits(name: str, tensors: dict[str, Any], pipe: Any, family: FamilySpec) -> None:
    """Refuse a LoRA made for another family, saying which family it is for."""
    cross = getattr(pipe.unet.config, "cross_attention_dim", None)
    dim = lora_cross_dim(tensors)
    layout = families.from_lora_keys(list(tensors))  # None: the SD 1.x/2.x layout
    by_width = families.from_cross_attention_dim(dim)
    made_for = None
    if (layout.family if layout else None) != (family.family if family.lora_keys else None):
        made_for = layout.short_label if layout else (by_width.short_label if by_width else "SD 1.x/2.x")
    elif dim is not None and cross is not None and dim != cross:
        made_for = by_width.short_label if by_width else f"a model with cross-attention width {dim}"
    if made_for:
        raise InvalidRequest(
            f"The LoRA {name!r} is for {made_for} models; this model is {family.label}.",
            field="loras",
            hint=f"Use it with a {made_for} model, or choose a LoRA made for {family.label}.",
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


def ensure_loaded(pipe: Any, loras: list[ResolvedLora], family: FamilySpec) -> None:
    """Load each LoRA into the pipeline once (as a peft adapter named by its hash)."""
    have = _loaded_adapters(pipe)
    if loras and not have.issuperset(lo.adapter for lo in loras):
        _check_no_float8(pipe)
    for lora in loras:
        if lora.adapter in have:
            continue
        tensors = read_state_dict(lora.file)
        check_lora_fits(lora.ref.name, tensors, pipe, family)
        try:
            pipe.load_lora_weights(tensors, adapter_name=lora.adapter)
        except (ValueError, KeyError, RuntimeError) as exc:
            _forget(pipe, lora.adapter)
            raise InvalidRequest(
                f"The LoRA {lora.ref.name!r} does not fit this model: {exc}",
                field="loras",
                hint=f"Choose a LoRA made for {family.label} (kohya/A1111 or diffusers format).",
            ) from exc
        have.add(lora.adapter)


def _check_no_float8(pipe: Any) -> None:
    """peft cannot wrap the fast path's static float8 layers: say so instead of a "does not fit" error."""
    from sdplay.accel import fp8

    if fp8.layers(pipe.unet):
        raise InvalidRequest(
            "LoRAs cannot be applied to this model: its UNet runs float8 linear layers (fast-path option fp8=static).",
            field="loras",
            hint="Remove fp8 from --fast-options / SDPLAY_FAST to use LoRAs, or leave the LoRA out of the prompt.",
        )


def _forget(pipe: Any, adapter: str) -> None:
    with suppress(Exception):  # a half-loaded adapter may be missing from some components
        pipe.delete_adapters([adapter])


@contextmanager
def applied(pipe: Any, loras: list[ResolvedLora], family: FamilySpec) -> Iterator[None]:
    """The pipeline with exactly `loras` active (weight 0 ones left out) for the duration of the block."""
    active = [lora for lora in loras if lora.ref.weight != 0 or lora.ref.text_weight != 0]
    if not active:
        yield
        return
    ensure_loaded(pipe, active, family)
    present = pipe.get_list_adapters()  # {"unet": [adapters], "text_encoder": [...]}: a LoRA may skip a part
    parts = [{"unet": lo.ref.weight} | dict.fromkeys(family.text_encoders, lo.ref.text_weight) for lo in active]
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
