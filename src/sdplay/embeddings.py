"""Textual inversion: embedding files of a folder, used by writing their name in a prompt (as in A1111).

An embedding's name is its file name without the suffix. Its vectors take the place of the name's tokens in the
prompt (inside emphasis too) when the prompt is encoded; nothing is added to the tokenizer or to the text encoder's
token table, so nothing stays behind for the next request (sdplay.prompts splices them in for one encoding call).

Formats, as A1111 reads them: A1111's `string_to_param` (in `.pt` files), a single tensor under any key (diffusers'
`<token>` files, `emb_params` in `.safetensors`), and SDXL's two-encoder files with `clip_l` and `clip_g`.
Pickled files (`.pt`, `.bin`) are read only when the user allows pickle, and then with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdplay.errors import InvalidRequest, ModelNotAvailable, UnsafeCheckpoint
from sdplay.loras import AddonFile, Folder, load_safetensors, refuse_pickled_addon

SUFFIXES = (".safetensors", ".pt", ".bin")
PICKLED = (".pt", ".bin")
MAX_VECTORS = 75  # one prompt chunk
WIDTH_FAMILY = {768: "SD 1.x", 1024: "SD 2.x"}  # text encoder width -> family of single-encoder embeddings
FIELD = "prompt"


@dataclass(frozen=True)
class Embedding:
    """The vectors of one embedding file: one (n, width) tensor per text encoder (SDXL: clip_l, then clip_g)."""

    name: str
    vectors: tuple[Any, ...]
    sdxl: bool = False
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def count(self) -> int:
        """How many token positions it takes in a prompt."""
        return int(self.vectors[0].shape[0])

    @property
    def shape(self) -> int:
        """A1111's `shape`: the width of the vectors, both encoders' added up for SDXL."""
        return sum(int(v.shape[-1]) for v in self.vectors)

    def made_for(self) -> str:
        """What this embedding was made for, as a user would name it ("SDXL models", "SD 1.x models", ...)."""
        if self.sdxl:
            return "SDXL models"
        width = int(self.vectors[0].shape[-1])
        return f"{WIDTH_FAMILY[width]} models" if width in WIDTH_FAMILY else f"a text encoder {width} wide"


def infotext(files: Iterable[AddonFile]) -> str | None:
    """A1111's `TI hashes` value: "name: hash, name: hash" (the first 10 hex digits of each file's sha256)."""
    parts = [f"{f.name.replace(':', '').replace(',', '')}: {f.sha256[:10]}" for f in files]
    return ", ".join(parts) or None


def _squash(text: str) -> str:
    """Lower case without white space: a name's tokens can only be in a prompt whose squashed text contains it."""
    return "".join(text.lower().split())


_TOKENIZER: list[Any] = []


def reference_tokenizer() -> Any:
    """The CLIP tokenizer every supported family uses (its vocabulary ships with sdplay), to find names at plan time."""
    if not _TOKENIZER:
        from transformers import CLIPTokenizer

        from sdplay.catalog import ASSETS

        _TOKENIZER.append(CLIPTokenizer.from_pretrained(str(ASSETS / "sdplay-emoji" / "tokenizer")))
    return _TOKENIZER[0]


class EmbeddingLibrary:
    """The embeddings folder of an engine: files by name, their vectors read once and cached."""

    def __init__(self, root: Path | str | None = None, *, allow_pickle: bool = False):
        self.folder = Folder(root, "embedding", SUFFIXES, folder="embeddings", watch=True)
        self.allow_pickle = allow_pickle
        self._cache: dict[tuple[str, int, float], Embedding] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        self.folder.refresh()

    def files(self) -> dict[str, AddonFile]:
        return self.folder.files()

    def get(self, name: str) -> AddonFile:
        """The file of an embedding named explicitly; names only, an unknown one lists the close ones."""
        return self.folder.get(name, FIELD)

    def used(self, texts: list[str], steps: int = 1) -> tuple[AddonFile, ...]:
        """The embeddings whose names appear in `texts` (every step's text of prompt editing), in order of use."""
        files = self.files()
        if not files:
            return ()
        squashed = [_squash(t) for t in texts]
        candidates = [n for n in files if _squash(n) and any(_squash(n) in t for t in squashed)]
        if not candidates:
            return ()
        from sdplay.prompt_syntax import schedule
        from sdplay.prompts import Vocab, tokenize

        tokenizer = reference_tokenizer()
        vocab = Vocab.build(tokenizer, dict.fromkeys(candidates, 1))
        found: dict[str, None] = {}
        for text in texts:
            for _, variant in schedule(text, steps):
                for chunk in tokenize(tokenizer, variant, vocab).fixes:
                    found.update((name, None) for _, name in chunk)
        return tuple(files[name] for name in found)

    def load(self, file: AddonFile) -> Embedding:
        """The vectors of a file, read and checked once (NaN/Inf, shapes, formats)."""
        key = (str(file.path), file.size, file.mtime)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = read_embedding(file, allow_pickle=self.allow_pickle)
            return self._cache[key]

    def listing(self, widths: tuple[int, ...] | None) -> dict[str, dict[str, Any]]:
        """A1111's /sdapi/v1/embeddings: those that fit text encoders of `widths` are loaded, the others skipped."""
        out: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for name, file in sorted(self.files().items()):
            try:
                emb = self.load(file)
            except (InvalidRequest, ModelNotAvailable, UnsafeCheckpoint) as exc:
                out["skipped"][name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                        "shape": None, "vectors": None, "error": str(exc)}  # fmt: skip
                continue
            fits = widths is not None and fitting(emb, widths)
            out["loaded" if fits else "skipped"][name] = {
                "step": emb.step, "sd_checkpoint": emb.sd_checkpoint, "sd_checkpoint_name": emb.sd_checkpoint_name,
                "shape": emb.shape, "vectors": emb.count,
            }  # fmt: skip
        return out


def fitting(emb: Embedding, widths: tuple[int, ...]) -> bool:
    """True if the embedding has one vector width per text encoder and they match (SDXL files for SDXL only)."""
    return emb.sdxl == (len(widths) == 2) and tuple(int(v.shape[-1]) for v in emb.vectors) == tuple(widths)


def check_fits(emb: Embedding, widths: tuple[int, ...], family_label: str) -> None:
    """Refuse an embedding made for another family, saying which family it is for."""
    if fitting(emb, widths):
        return
    made_for = emb.made_for()
    if emb.sdxl and len(widths) == 2:  # an SDXL file, but not this model's widths (custom encoders)
        made_for = f"SDXL text encoders {'+'.join(str(int(v.shape[-1])) for v in emb.vectors)} wide"
    raise InvalidRequest(
        f"The embedding {emb.name!r} is for {made_for}; this model is {family_label} "
        f"(text encoder{'s' if len(widths) > 1 else ''} {'+'.join(map(str, widths))} wide).",
        field=FIELD,
        hint=f"Use a model it was made for, or take {emb.name!r} out of the prompt (the embeddings folder "
        "makes every file name a word of the prompt).",
    )


# -- reading a file --------------------------------------------------------------------------------
def read_embedding(file: AddonFile, *, allow_pickle: bool = False) -> Embedding:
    """Read and check one embedding file."""
    data = _read(file, allow_pickle)
    vectors, sdxl = _vectors(data, file)
    meta = {k: data.get(k) for k in ("step", "sd_checkpoint", "sd_checkpoint_name")}
    meta = {k: (v if isinstance(v, int | str) and not isinstance(v, bool) else None) for k, v in meta.items()}
    return Embedding(file.name, vectors, sdxl, **meta)


def _read(file: AddonFile, allow_pickle: bool) -> dict[str, Any]:
    path = file.path
    if path.suffix.lower() in PICKLED:
        if not allow_pickle:
            refuse_pickled_addon("embedding", path, FIELD)
        import torch

        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, not a torch file, or objects beyond plain tensors
            raise ModelNotAvailable(
                f"The embedding {path.name} cannot be read: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                field=FIELD,
                hint="It is truncated, not an embedding, or holds more than plain tensors; use a .safetensors copy.",
            ) from exc
    else:
        data = load_safetensors(path, "embedding", FIELD)
    if not isinstance(data, dict) or not data:
        raise ModelNotAvailable(f"The embedding {path.name} holds no tensors.", field=FIELD)
    return data


def _vectors(data: dict[str, Any], file: AddonFile) -> tuple[tuple[Any, ...], bool]:
    """(one (n, width) tensor per text encoder, SDXL?) from any of the formats A1111 reads."""
    import torch

    if "clip_l" in data and "clip_g" in data:
        vectors, sdxl = (data["clip_l"], data["clip_g"]), True
    elif "string_to_param" in data:  # A1111's own format
        params = getattr(data["string_to_param"], "_parameters", data["string_to_param"])
        vectors, sdxl = _single(file, [v for v in dict(params).values()]), False
    else:  # diffusers' {"<token>": tensor}, or {"emb_params": tensor}
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if "emb_params" in tensors:
            tensors = {"emb_params": tensors["emb_params"]}
        vectors, sdxl = _single(file, list(tensors.values())), False
    out = []
    for vec in vectors:
        if not isinstance(vec, torch.Tensor) or not vec.is_floating_point() or vec.ndim not in (1, 2):
            raise ModelNotAvailable(f"The embedding {file.path.name} is not a set of vectors.", field=FIELD,
                                    hint="Textual-inversion files hold an (n, width) float tensor.")  # fmt: skip
        vec = vec.detach().float().reshape(-1, vec.shape[-1])
        if not torch.isfinite(vec).all():
            raise ModelNotAvailable(
                f"The embedding {file.path.name} holds NaN or infinite values.",
                field=FIELD,
                hint="The file is damaged (or was trained into NaN); use another copy.",
            )
        out.append(vec)
    counts = {int(v.shape[0]) for v in out}
    if len(counts) != 1 or not 1 <= counts.pop() <= MAX_VECTORS:
        raise ModelNotAvailable(
            f"The embedding {file.path.name} has {'/'.join(str(int(v.shape[0])) for v in out)} vectors.",
            field=FIELD,
            hint=f"sdplay reads embeddings of 1 to {MAX_VECTORS} vectors (the same number for clip_l and clip_g).",
        )
    return tuple(out), sdxl


def _single(file: AddonFile, tensors: list[Any]) -> tuple[Any]:
    if len(tensors) != 1:
        raise ModelNotAvailable(
            f"The embedding {file.path.name} has {len(tensors)} terms in it; sdplay reads files of one term.",
            field=FIELD,
            hint="A textual-inversion file holds one tensor (or clip_l and clip_g for SDXL).",
        )
    return (tensors[0],)
