"""Hand-made PNG files for hostile-input tests: built chunk by chunk, so no image library decides what is valid."""

from __future__ import annotations

import struct
import zlib


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(width: int = 8, height: int = 8, *texts: bytes, idat: bytes | None = None) -> bytes:
    """An RGB PNG of `width` x `height` (black) with the given text chunks before its pixels."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if idat is None:
        idat = zlib.compress(b"\0" * (height * (width * 3 + 1)))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(texts) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def black_idat(width: int, height: int) -> bytes:
    """The compressed pixels of a black RGB image, made in pieces (a 9000x9000 image: 243 MB raw, ~240 KB)."""
    z, row, out = zlib.compressobj(9), b"\0" * (width * 3 + 1), []
    rows_per_piece = max(1, 2**20 // len(row))
    for start in range(0, height, rows_per_piece):
        out.append(z.compress(row * min(rows_per_piece, height - start)))
    return b"".join(out) + z.flush()


def text(key: str, value: str) -> bytes:
    return chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))


def itxt(key: str, value: str, compressed: bool = False) -> bytes:
    data = value.encode("utf-8")
    data = zlib.compress(data) if compressed else data
    return chunk(b"iTXt", key.encode("latin-1") + b"\0" + bytes([int(compressed), 0]) + b"\0\0" + data)


def ztxt_bomb(key: str = "parameters", megabytes: int = 50) -> bytes:
    """A zTXt chunk of ~50 KB that inflates to `megabytes` MB."""
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"A" * 2**20) for _ in range(megabytes)) + z.flush()
    return chunk(b"zTXt", key.encode("latin-1") + b"\0\0" + body)
