"""Images coming in: decoded from bytes only after their header passed the size limits, then made 8-bit RGB."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from typing import TYPE_CHECKING, Any

from sdplay.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

MAX_INPUT_BYTES = 32 * 1024 * 1024
MAX_INPUT_PIXELS = 4096 * 4096
FORMATS = ("PNG", "JPEG", "WEBP")
_DATA_URL = re.compile(r"^data:([\w/+.-]*)(;[\w=.-]+)*;base64,", re.IGNORECASE)


def decode_base64(text: str, field: str = "image") -> bytes:
    """Bytes of a data URL (`data:image/png;base64,...`) or of bare base64, the two forms A1111 clients send."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"{field} must be a base64-encoded PNG, JPEG or WebP image.", field=field)
    body = _DATA_URL.sub("", text.strip(), count=1)
    if len(body) > MAX_INPUT_BYTES * 4 // 3 + 4:
        raise _too_many_bytes(field, len(body) * 3 // 4)
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            f"{field} is not valid base64.", field=field, hint="Send the image file's bytes base64-encoded."
        ) from exc


def open_checked(data: bytes, field: str = "image", max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Open an image and check its format and size from the header alone; no pixel is decoded yet."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InvalidRequest(f"{field} is empty.", field=field, hint="Send a PNG, JPEG or WebP file.")
    if len(data) > MAX_INPUT_BYTES:
        raise _too_many_bytes(field, len(data))
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(field, None, max_pixels) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequest(
            f"{field} is not a PNG, JPEG or WebP image.", field=field, hint="Send the image file itself."
        ) from exc
    width, height = img.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise _too_many_pixels(field, img.size, max_pixels)
    return img


def decode_image(
    data: bytes, field: str = "image", *, keep_alpha: bool = False, max_pixels: int = MAX_INPUT_PIXELS
) -> Image.Image:
    """PNG/JPEG/WebP bytes -> an upright 8-bit RGB image (RGBA with `keep_alpha`), size checked before decoding."""
    from PIL import Image, ImageOps

    img = open_checked(data, field, max_pixels)
    try:
        img.seek(0)  # the first frame of an animated image
        img.load()
        img = ImageOps.exif_transpose(img)  # as cameras meant it to be shown
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(f"{field} is damaged: {exc}.", field=field, hint="Export the image again.") from exc
    return to_rgb(img, field, keep_alpha=keep_alpha)


def to_rgb(img: Image.Image, field: str = "image", *, keep_alpha: bool = False) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (or RGBA): palettes expanded, CMYK converted, 16/32-bit scaled to 8 bits;
    transparency is flattened onto white unless kept."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "L", "LA", "La", "PA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGBA" if mode in ("LA", "La", "PA", "RGBa") else "RGB")
    elif mode not in ("RGB", "RGBA"):
        raise InvalidRequest(
            f"{field} uses the pixel format {mode}, which sdplay cannot read.",
            field=field,
            hint="Save it as an 8-bit RGB PNG or JPEG.",
        )
    if img.mode == "RGBA" and not keep_alpha:
        flat = Image.new("RGB", img.size, (255, 255, 255))
        flat.paste(img, mask=img.getchannel("A"))
        return flat
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit or 32-bit greyscale -> 8-bit RGB, keeping the relative brightness."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(img).astype(np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    if img.mode == "F":
        top = max(float(arr.max(initial=1.0)), 1.0) if arr.max(initial=0) > 1.0 else 1.0
    grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def decode_mask(data: bytes, field: str = "mask", size: tuple[int, int] | None = None) -> Image.Image:
    """Mask bytes -> an "L" image, white = the area to repaint (A1111's convention: an RGBA mask with real
    transparency uses its alpha, opaque = repaint); `size` is the size it must have."""
    img = decode_image(data, field, keep_alpha=True)
    return mask_from_image(img, field, size)


def mask_from_image(img: Image.Image, field: str = "mask", size: tuple[int, int] | None = None) -> Image.Image:
    """An image -> an "L" mask, checked against the expected size."""
    if img.mode == "RGBA" and img.getchannel("A").getextrema() != (255, 255):
        mask = img.getchannel("A")
    else:
        mask = img.convert("L")
    if size is not None and mask.size != tuple(size):
        w, h = size
        raise InvalidRequest(
            f"{field} is {mask.size[0]}x{mask.size[1]} but the image is {w}x{h}.",
            field=field,
            hint=f"Send a {w}x{h} mask (white = the area to repaint, black = keep).",
        )
    return mask


def alpha_mask(img: Image.Image) -> Image.Image | None:
    """The transparent pixels of an RGBA image as a mask (white = transparent), or None if it is opaque."""
    if img.mode != "RGBA":
        return None
    alpha = img.getchannel("A")
    if alpha.getextrema() == (255, 255):
        return None
    return alpha.point(lambda a: 255 - a)


def image_hash(img: Image.Image) -> str:
    """SHA-256 of an image's size, mode and pixels: the same picture gives the same hash in any file format."""
    digest = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()


def _too_many_bytes(field: str, n: int) -> InvalidRequest:
    return InvalidRequest(
        f"{field} is {n / 2**20:.1f} MiB; the limit is {MAX_INPUT_BYTES // 2**20} MiB.",
        field=field,
        hint="Send a smaller file (a PNG or a JPEG of at most 4096x4096).",
    )


def _too_many_pixels(field: str, size: Any, max_pixels: int) -> InvalidRequest:
    what = f"{size[0]}x{size[1]} ({size[0] * size[1]:,} pixels)" if size else "far too large (a decompression bomb?)"
    return InvalidRequest(
        f"{field} is {what}; the limit is {max_pixels:,} pixels.",
        field=field,
        hint="Scale the image down (e.g. to 2048x2048) before sending it.",
    )
