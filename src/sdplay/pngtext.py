"""Read a PNG's size and text chunks (tEXt, zTXt, iTXt) without decoding a single pixel.

Every bound is checked before the work it guards: the file is walked chunk by chunk (never past `max_bytes`),
compressed text is inflated at most `max_text_bytes` at a time (a zTXt "zip bomb" stops at the bound), and the
image's declared size is checked against `max_pixels` from the IHDR alone. Malformed files raise InvalidRequest.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from sdplay.errors import InvalidRequest, SdplayError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 4 * 2**20  # all text chunks together, after decompression
MAX_CHUNKS = 10_000
MAX_PIXELS = 2**28  # 16384 x 16384: far above any model's size, far below a decompression bomb's


class ImageTooLarge(SdplayError):
    """An uploaded image (or its metadata) is over a size limit; nothing was decoded."""

    status = 413


@dataclass
class PngText:
    """What a PNG says about itself: its declared size and its text chunks (keyword -> text)."""

    width: int
    height: int
    text: dict[str, str] = field(default_factory=dict)


def read_png_text(
    data: bytes, *, max_pixels: int = MAX_PIXELS, max_text_bytes: int = MAX_TEXT_BYTES, field_name: str = "image"
) -> PngText:
    """Size and text of the PNG in `data`; InvalidRequest if it is not a PNG, ImageTooLarge past a bound."""
    if not data.startswith(SIGNATURE):
        raise InvalidRequest("This is not a PNG file.", field=field_name, hint="Send a PNG image.")
    pos, budget, result, chunks = len(SIGNATURE), max_text_bytes, None, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or len(data) < pos + 12 + length:
            raise _broken("a chunk runs past the end of the file", field_name)
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise _broken(f"it has more than {MAX_CHUNKS:,} chunks", field_name)
        if result is None:
            result = _header(kind, body, max_pixels, field_name)
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, text = _text_chunk(kind, body, budget, field_name)
            budget -= len(text.encode("utf-8"))
            result.text.setdefault(key, text)
        elif kind == b"IEND":
            return result
        pos += 12 + length
    if result is None:
        raise _broken("it has no IHDR chunk", field_name)
    raise _broken("it is truncated (a chunk runs past the end of the file, or IEND is missing)", field_name)


def _header(kind: bytes, body: bytes, max_pixels: int, field_name: str) -> PngText:
    if kind != b"IHDR" or len(body) != 13:
        raise _broken("it does not start with a valid IHDR chunk", field_name)
    width, height = struct.unpack(">II", body[:8])
    if width == 0 or height == 0:
        raise _broken(f"it declares a size of {width}x{height}", field_name)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image declares {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}.",
            field=field_name,
            hint="Send a smaller image (its pixels were not decoded).",
        )
    return PngText(width, height)


def _text_chunk(kind: bytes, body: bytes, budget: int, field_name: str) -> tuple[str, str]:
    """(keyword, text) of one text chunk, inflating compressed text at most `budget` bytes."""
    key, sep, rest = body.partition(b"\0")
    if not sep or not 1 <= len(key) <= 79:
        raise _broken(f"a {kind.decode()} chunk has no valid keyword", field_name)
    keyword = key.decode("latin-1")
    if kind == b"tEXt":
        raw, encoding = rest, "latin-1"
    elif kind == b"zTXt":
        if not rest or rest[0] != 0:
            raise _broken("a zTXt chunk uses an unknown compression method", field_name)
        raw, encoding = _inflate(rest[1:], budget, field_name), "latin-1"
    else:  # iTXt: flag, method, language\0, translated keyword\0, text (UTF-8)
        if len(rest) < 2:
            raise _broken("an iTXt chunk is truncated", field_name)
        compressed, method, tail = rest[0], rest[1], rest[2:]
        _lang, _, tail = tail.partition(b"\0")
        _translated, _, raw = tail.partition(b"\0")
        if compressed:
            if method != 0:
                raise _broken("an iTXt chunk uses an unknown compression method", field_name)
            raw = _inflate(raw, budget, field_name)
        encoding = "utf-8"
    if len(raw) > budget:
        raise _too_much_text(field_name)
    try:
        return keyword, raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _broken(f"the text of {keyword!r} is not valid {encoding}", field_name) from exc


def _inflate(data: bytes, budget: int, field_name: str) -> bytes:
    """zlib-decompress at most `budget` bytes; ImageTooLarge if the stream would give more."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max(0, budget) + 1)
    except zlib.error as exc:
        raise _broken("a compressed text chunk is corrupt", field_name) from exc
    if len(out) > budget or inflater.unconsumed_tail:
        raise _too_much_text(field_name)
    return out


def _too_much_text(field_name: str) -> ImageTooLarge:
    return ImageTooLarge(
        f"The image's text chunks hold more than {MAX_TEXT_BYTES // 2**20} MB of text.",
        field=field_name,
        hint="This is not generation metadata; send the image that was generated.",
    )


def _broken(why: str, field_name: str) -> InvalidRequest:
    return InvalidRequest(f"The PNG is malformed: {why}.", field=field_name, hint="Send the PNG file as it was saved.")
