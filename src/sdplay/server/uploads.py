"""Uploaded input images, kept in memory (bounded) and named by their content hash for later jobs."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from sdplay.image_input import open_checked
from sdplay.server.errors import NotFound

PREFIX = "upload:"


class Uploads:
    """At most `max_count` images and `max_bytes` in all; the oldest go first."""

    def __init__(self, max_count: int = 64, max_bytes: int = 256 * 2**20):
        self.max_count, self.max_bytes = max_count, max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, data: bytes) -> dict:
        """Check type and size from the header (nothing decoded), keep the bytes, return id and size."""
        img = open_checked(data, "file")
        info = {"width": img.size[0], "height": img.size[1], "format": img.format.lower(), "bytes": len(data)}
        img.close()
        upload_id = hashlib.sha256(data).hexdigest()[:32]
        with self._lock:
            self._items[upload_id] = data
            self._items.move_to_end(upload_id)
            while len(self._items) > self.max_count or sum(map(len, self._items.values())) > self.max_bytes:
                self._items.popitem(last=False)
        return {"id": PREFIX + upload_id, **info}

    def get(self, ref: str, field: str) -> bytes:
        key = ref.removeprefix(PREFIX)
        with self._lock:
            data = self._items.get(key)
        if data is None:
            raise NotFound(f"{field}: no upload {ref!r} (uploads are kept in memory, the oldest dropped first).",
                           hint="Upload the image again with POST /api/v1/uploads.")  # fmt: skip
        return data

    def resolve(self, value: str | None, field: str) -> bytes | None:
        """An `upload:ID` reference or base64 (data URL or bare) -> the image bytes."""
        if value is None:
            return None
        if value.startswith(PREFIX):
            return self.get(value, field)
        from sdplay.image_input import decode_base64

        return decode_base64(value, field)
