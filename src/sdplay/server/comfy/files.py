"""The folders ComfyUI's /view and /upload name by `type`: never a path outside them, never a non-image."""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
SAFE_NAME = re.compile(r"^[^\x00-\x1f/\\:*?\"<>|]{1,200}$")
MAX_UPLOAD_PIXELS = 4096 * 4096


class FileRefused(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def folder(settings: Any, kind: str) -> Path:
    """output (SaveImage), temp (PreviewImage: stored with the outputs) or input (uploads)."""
    if kind in ("output", "temp"):
        return Path(settings.output_dir)
    if kind == "input":
        return Path(settings.input_dir)
    raise FileRefused(f"Unknown type {kind!r}; use output, temp or input.")


def _part(name: str, what: str) -> str:
    if not SAFE_NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise FileRefused(f"Invalid {what} {name!r}: a plain name without path separators is expected.")
    return name


def _subparts(subfolder: str) -> list[str]:
    return [_part(p, "subfolder") for p in subfolder.replace("\\", "/").split("/") if p]


def inside(root: Path, *parts: str) -> Path:
    """root/parts, resolved (links followed); refused if that leaves root."""
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise FileRefused("That path is outside the server's folders.", 403)
    return path


def find(settings: Any, kind: str, subfolder: str, filename: str) -> Path:
    """The image file named by /view's query; FileRefused (400/403/404) otherwise."""
    name = _part(filename, "filename")
    if Path(name).suffix.lower() not in IMAGE_TYPES:
        raise FileRefused(f"{name!r} is not an image this server serves (.png, .jpg, .webp).", 404)
    path = inside(folder(settings, kind), *_subparts(subfolder), name)
    if not path.is_file():
        raise FileRefused(f"No file {name!r} in {kind}/{subfolder}.", 404)
    return path


def render(path: Path, preview: str | None, channel: str | None) -> tuple[bytes, str]:
    """The file as stored, or converted for ComfyUI's `preview=webp;90` and `channel=rgb|a`."""
    media = IMAGE_TYPES[path.suffix.lower()]
    if not preview and channel in (None, "", "rgba"):
        return path.read_bytes(), media
    from PIL import Image

    with Image.open(path) as img:
        img = _channel(img, channel)
        fmt, quality = _preview(preview, path)
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=quality)
    return buf.getvalue(), f"image/{fmt.lower()}"


def _channel(img, channel: str | None):
    if channel == "rgb":
        return img.convert("RGB")
    if channel == "a":
        from PIL import Image

        alpha = img.convert("RGBA").getchannel("A")
        return Image.merge("RGBA", (alpha, alpha, alpha, alpha))
    return img


def _preview(preview: str | None, path: Path) -> tuple[str, int]:
    if not preview:
        return ("PNG", 90)
    fmt, _, quality = preview.partition(";")
    fmt = fmt.strip().lower()
    if fmt not in ("webp", "jpeg", "png"):
        raise FileRefused(f"preview format {fmt!r} is not one of webp, jpeg, png.")
    return fmt.upper(), int(quality) if quality.strip().isdigit() else 90


def _check_image(data: bytes) -> None:
    """An image Pillow can read, within the pixel limit: its header is read before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_UPLOAD_PIXELS:
                raise FileRefused(f"The image is {img.width}x{img.height}; the limit is 4096x4096 pixels.", 413)
            if img.format not in ("PNG", "JPEG", "WEBP"):
                raise FileRefused(f"{img.format} images are not accepted; send PNG, JPEG or WebP.", 415)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FileRefused(f"Not a readable image: {exc}.", 400) from exc


def store_upload(settings: Any, filename: str, data: bytes, fields: dict[str, str], mask: bool) -> dict[str, str]:
    """Save an uploaded image as ComfyUI does: into input/ (or temp/), renaming 'x (1).png' unless overwrite."""
    kind = fields.get("type") or "input"
    if kind not in ("input", "temp"):
        raise FileRefused(f"Uploads go to type input or temp, not {kind!r}.")
    _check_image(data)
    name = _part(Path(filename.replace("\\", "/")).name or "upload.png", "filename")
    if Path(name).suffix.lower() not in IMAGE_TYPES:
        name = f"{Path(name).stem or 'upload'}.png"
    subfolder = "/".join(_subparts(fields.get("subfolder", "")))
    root = inside(folder(settings, kind), *subfolder.split("/")) if subfolder else inside(folder(settings, kind))
    if mask:
        data, name = _apply_mask(settings, data, fields.get("original_ref", "")), Path(name).stem + ".png"
    root.mkdir(parents=True, exist_ok=True)
    path = _free_name(root, name, fields.get("overwrite", "").lower() in ("true", "1"))
    tmp = root / f".{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return {"name": path.name, "subfolder": subfolder, "type": kind}


def _free_name(root: Path, name: str, overwrite: bool) -> Path:
    path = inside(root, name)
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 1
    while not overwrite and path.exists():
        path = inside(root, f"{stem} ({n}){suffix}")
        n += 1
    return path


def _apply_mask(settings: Any, data: bytes, original_ref: str) -> bytes:
    """The original image with the mask's alpha as its alpha channel (ComfyUI's /upload/mask)."""
    from PIL import Image

    try:
        ref = json.loads(original_ref)
        original = find(settings, ref.get("type") or "input", ref.get("subfolder") or "", ref["filename"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FileRefused("original_ref must be JSON {filename, subfolder, type} of an uploaded image.") from exc
    with Image.open(original) as base, Image.open(io.BytesIO(data)) as mask:
        image = base.convert("RGBA")
        alpha = mask.convert("RGBA").getchannel("A").resize(image.size)
        image.putalpha(alpha)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
    return buf.getvalue()
