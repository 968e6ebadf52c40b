"""Training data: the Noto emoji set (fetched with npm) and folders of captioned images.

Run `python -m sdplay.training.data` to fetch the emoji package and build the cached array file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdplay.errors import DataError
from sdplay.extras import install_command
from sdplay.paths import atomic_file

PACKAGE = "emoji-datasource-google@16"
KEYWORD_PACKAGES = ("emojilib@4", "cldr-annotations-full@48")  # keywords and alternative names (MIT, Unicode-3.0)
EMOJILIB_FILE = "package/dist/emoji-en-US.json"
CLDR_FILE = "package/annotations/en/annotations.json"
IMAGE_PREFIX = "package/img/google/64/"
SKIP_CATEGORIES = frozenset({"Component"})  # the five skin-tone swatches
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class CaptionedImages:
    """Images with their captions: `captions[i]` is the main caption, `variants[i]` all of them."""

    images: np.ndarray  # (N, H, W, 3) uint8, RGB on white
    captions: list[str]
    variants: list[list[str]]
    source: str = ""
    categories: list[str] | None = None
    keywords: list[list[str]] | None = None  # other words people use for each image (not captions by themselves)

    def __len__(self) -> int:
        return len(self.captions)


def cache_dir() -> Path:
    """Where sdplay caches downloads: $SDPLAY_CACHE, else ~/.cache/sdplay."""
    return Path(os.environ.get("SDPLAY_CACHE") or Path.home() / ".cache" / "sdplay").expanduser()


def default_data_path() -> Path:
    """The emoji array file: $SDPLAY_EMOJI_DATA, else <cache>/data/emoji64.npz."""
    env = os.environ.get("SDPLAY_EMOJI_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data" / "emoji64.npz"


# 1. Fetch and read the npm package ------------------------------------------------------------


def fetch_package(dest: Path, spec: str = PACKAGE) -> Path:
    """Download an npm package tarball with `npm pack` into `dest` (once) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    name, _, major = spec.rpartition("@")
    pattern = f"{name}-{major}*.tgz"
    found = sorted(dest.glob(pattern))
    if found:
        return found[-1]
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(
            "npm is not installed, so the emoji data cannot be fetched.",
            hint=f"Install Node.js/npm, or run `npm pack {spec}` elsewhere and copy the .tgz into {dest}.",
        )
    proc = subprocess.run([npm, "pack", spec, "--silent"], cwd=dest, capture_output=True, text=True)
    found = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not found:
        raise DataError(
            f"`npm pack {spec}` failed: {proc.stderr.strip()[-300:] or 'no tarball written'}.",
            hint="Check the network connection to the npm registry and try again.",
        )
    return found[-1]


def _read_json_member(tgz: Path, member: str):
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            return json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    except (tarfile.TarError, KeyError, OSError, EOFError, AttributeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{tgz} has no readable {member} ({type(exc).__name__}: {exc}).",
            hint="Delete it and run `sdplay train --prepare --force` to download a fresh copy.",
        ) from exc


def read_keywords(emojilib_tgz: Path, cldr_tgz: Path) -> dict[str, list[str]]:
    """Keywords per emoji character (without variation selectors): CLDR annotations, then emojilib's."""
    table: dict[str, list[str]] = {}
    cldr = _read_json_member(cldr_tgz, CLDR_FILE)
    for char, entry in cldr.get("annotations", {}).get("annotations", {}).items():
        table.setdefault(_bare(char), []).extend(entry.get("default", []))
    for char, words in _read_json_member(emojilib_tgz, EMOJILIB_FILE).items():
        table.setdefault(_bare(char), []).extend(words[1:])  # the first is emojilib's own name
    return {c: _unique(_clean(w) for w in words) for c, words in table.items()}


def _bare(char: str) -> str:
    return char.replace("\ufe0f", "")


def _unique(items) -> list[str]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


def _emoji_names() -> dict[str, dict]:
    """The `emoji` package's table (CLDR names such as 'red heart'), keyed by character."""
    try:
        import emoji
    except ImportError as exc:
        raise DataError(
            "Building the emoji captions needs the `emoji` package (CLDR names such as 'red heart').",
            hint=f"Install it with: {install_command('train')}",
        ) from exc
    return emoji.EMOJI_DATA


def _char(codepoints: str) -> str:
    return "".join(chr(int(part, 16)) for part in codepoints.split("-"))


def _clean(text: str) -> str:
    return " ".join(text.strip(":").replace("_", " ").lower().split())


def emoji_captions(entry: dict, cldr: dict[str, dict]) -> list[str]:
    """Captions of one emoji.json entry: main name first, then other names, then name with category."""
    info = cldr.get(_char(entry["unified"])) or cldr.get(_char(entry.get("non_qualified") or entry["unified"])) or {}
    source_name = _clean(entry.get("name") or entry.get("short_name") or "")
    cldr_name = _clean(info.get("en", ""))
    main = source_name if entry.get("category") == "Flags" or not cldr_name else cldr_name
    names = [main, source_name, *(_clean(s) for s in entry.get("short_names") or [])]
    names = [n for i, n in enumerate(names) if n and n not in names[:i]]
    category = _clean(entry.get("category") or "")
    captions = [*names, f"{main}, {category}", f"{main}, {', '.join(names[1:])}"]
    return [c for i, c in enumerate(captions) if c not in captions[:i] and not c.endswith(", ")]


def _read_tar(tgz: Path) -> dict[str, bytes]:
    """emoji.json and the 64px images of the tarball, in one sequential pass."""
    files = {}
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            if member.isfile() and (member.name == "package/emoji.json" or member.name.startswith(IMAGE_PREFIX)):
                files[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return files


def read_package(tgz: Path, keywords: dict[str, list[str]] | None = None) -> CaptionedImages:
    """Build the image-caption pairs from the package tarball: base emoji only, composited on white.

    `keywords` (from `read_keywords`) adds each emoji's other words, minus those already in its names.
    """
    from PIL import Image

    try:
        files = _read_tar(tgz)
        entries = json.loads(files.pop("package/emoji.json"))
        cldr = _emoji_names()
        images, captions, variants, categories, words = [], [], [], [], []
        for entry in sorted(entries, key=lambda e: e.get("sort_order", 0)):
            data = files.get(IMAGE_PREFIX + entry.get("image", ""))
            if entry.get("category") in SKIP_CATEGORIES or not entry.get("has_img_google") or data is None:
                continue
            images.append(np.asarray(to_rgb(Image.open(io.BytesIO(data))).resize((64, 64), Image.LANCZOS)))
            names = emoji_captions(entry, cldr)
            captions.append(names[0])
            variants.append(names)
            categories.append(_clean(entry.get("category") or ""))
            found = (keywords or {}).get(_bare(_char(entry["unified"])), [])
            words.append([w for w in found if w not in names])
    except (tarfile.TarError, KeyError, OSError, EOFError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{tgz} is not a readable emoji-datasource-google package ({type(exc).__name__}: {exc}).",
            hint="Delete it and run `python -m sdplay.training.data` again to download a fresh copy.",
        ) from exc
    source = f"npm:{PACKAGE}" + ("".join(f" npm:{p}" for p in KEYWORD_PACKAGES) if keywords else "")
    return CaptionedImages(np.stack(images), captions, variants, source, categories, words if keywords else None)


# 2. The cached array file -----------------------------------------------------------------------


def save_set(data: CaptionedImages, path: Path) -> Path:
    """Write the set as one compressed .npz, atomically (a stopped write leaves no broken file)."""
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            images=data.images,
            captions=np.array(data.captions, dtype=str),
            variants=np.array(json.dumps(data.variants)),
            source=np.array(data.source),
            categories=np.array(data.categories or [""] * len(data), dtype=str),
            keywords=np.array(json.dumps(data.keywords or [[] for _ in data.captions])),
        )
    return path


def load_set(path: Path | str | None = None) -> CaptionedImages:
    """Read a cached .npz set, checking that it is complete and consistent."""
    path = Path(path) if path else default_data_path()
    if not path.is_file():
        raise DataError(
            f"No training data at {path}.",
            hint="Run `sdplay train --prepare` (or `python -m sdplay.training.data`) to fetch and build it.",
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, captions = npz["images"], [str(c) for c in npz["captions"]]
            variants = json.loads(str(npz["variants"])) if "variants" in npz else [[c] for c in captions]
            source = str(npz["source"]) if "source" in npz else ""
            categories = [str(c) for c in npz["categories"]] if "categories" in npz else None
            keywords = json.loads(str(npz["keywords"])) if "keywords" in npz else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path} is corrupt or not a sdplay data file ({type(exc).__name__}: {exc}).",
            hint="Delete it and run `sdplay train --prepare` to rebuild it.",
        ) from exc
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) != len(captions):
        raise DataError(
            f"{path} holds {images.shape} {images.dtype} images for {len(captions)} captions; "
            "expected (N, H, W, 3) uint8 with one caption each.",
            hint="Delete it and rebuild it with `sdplay train --prepare`.",
        )
    _check_captions(captions, [f"{path} item {i}" for i in range(len(captions))])
    return CaptionedImages(images, captions, variants, source, categories, keywords)


def prepare(path: Path | str | None = None, force: bool = False) -> Path:
    """Fetch the emoji package (if needed) and build the cached array file; return its path."""
    path = Path(path) if path else default_data_path()
    if path.is_file() and not force:
        return path
    npm = cache_dir() / "npm"
    tgz = fetch_package(npm)
    keywords = read_keywords(*(fetch_package(npm, spec) for spec in KEYWORD_PACKAGES))
    return save_set(read_package(tgz, keywords), path)


# 3. A folder of captioned images (fine-tuning) --------------------------------------------------


def to_rgb(image) -> object:
    """Any PIL image as RGB: transparency composited onto white, other modes converted."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return image.convert("RGB")


def _fit(image, size: int) -> object:
    """Resize the shorter side to `size` and crop the centre square."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.LANCZOS)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_folder(folder: Path | str, size: int, min_side: int = 8) -> CaptionedImages:
    """Images in `folder`, each with a non-empty `<name>.txt` caption beside it, as RGB `size`x`size`."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder.", hint="Pass a folder of images with a .txt caption beside each.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).",
            hint="Put images there, each with a caption file of the same name ending in .txt.",
        )
    images, captions = [], []
    for file in files:
        caption_file = file.with_suffix(".txt")
        if not caption_file.is_file():
            raise DataError(f"{file} has no caption file {caption_file.name}.", hint="Write its caption there.")
        captions.append(" ".join(caption_file.read_text(encoding="utf-8", errors="replace").split()))
        try:
            with Image.open(file) as im:
                im.load()
                if min(im.size) < min_side:
                    raise DataError(f"{file} is {im.size[0]}x{im.size[1]}, too small to train on.", hint=_SIZE_HINT)
                images.append(np.asarray(_fit(to_rgb(im), size), dtype=np.uint8))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{file} is not a readable image ({exc}).", hint="Remove or re-save it.") from exc
    _check_captions(captions, [str(f.with_suffix(".txt")) for f in files])
    return CaptionedImages(np.stack(images), captions, [[c] for c in captions], source=str(folder))


_SIZE_HINT = "Use images at least 8 pixels on each side (ideally the model's native size or more)."


def _check_captions(captions: list[str], where: list[str]) -> None:
    for caption, place in zip(captions, where, strict=True):
        if not caption.strip():
            raise DataError(f"Empty caption in {place}.", hint="Every image needs a caption describing it.")


def main(argv: list[str] | None = None) -> int:
    """Command line: fetch the emoji package and build the cached array file."""
    parser = argparse.ArgumentParser(prog="python -m sdplay.training.data", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=None, help=f"array file (default {default_data_path()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    args = parser.parse_args(argv)
    path = prepare(args.out, force=args.force)
    data = load_set(path)
    print(f"{path}: {len(data)} images {data.images.shape[1]}x{data.images.shape[2]}, e.g. {data.variants[0]}")
    if data.keywords:
        print(f"  keywords of {data.captions[0]!r}: {data.keywords[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
