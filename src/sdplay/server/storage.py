"""Image files of finished jobs: written under the output folder by job id, read back by job id + index."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import secrets
import time
from pathlib import Path

from sdplay.server.errors import Gone, NotFound
from sdplay.types import GenerationResult

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def check_job_id(job_id: str) -> str:
    """A job id exactly as the server makes them (32 hex digits); anything else is simply not found."""
    if not JOB_ID.match(job_id):
        raise NotFound(f"No job {job_id!r}.", field="id", hint="Job ids are the 32-character ids the server returned.")
    return job_id


def save_result(
    result: GenerationResult, output_dir: Path, job_id: str, extra_text: dict[str, str] | None = None
) -> list[Path]:
    """Write every image of `result` as PNG (A1111 `parameters`, sdplay JSON, `extra_text`) under output_dir/job_id/."""
    from sdplay.images import ensure_writable, save_png

    folder = ensure_writable(Path(output_dir) / check_job_id(job_id))
    return [save_png(result, i, folder, extra_text) for i in range(len(result.images))]


def encode_file(path: Path, fmt: str = "png", quality: int = 90) -> bytes:
    """The image at `path` as `fmt` bytes; PNG is served as written, with its metadata."""
    if fmt == "png":
        return path.read_bytes()
    from PIL import Image

    with Image.open(path) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=fmt.upper(), quality=quality)
        return buf.getvalue()


def png_bytes(image) -> bytes:
    """A PIL image as plain PNG bytes (previews)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class UrlSigner:
    """Signed, expiring tokens naming one image of one job in one format (for OpenAI `url` responses)."""

    def __init__(self, secret: str | None, ttl_s: int):
        self._key = (secret or secrets.token_hex(32)).encode()
        self.ttl_s = ttl_s

    def sign(self, job_id: str, index: int, fmt: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + self.ttl_s)
        payload = f"{job_id}.{index}.{fmt}.{expires}"
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, now: float | None = None) -> tuple[str, int, str]:
        """(job_id, index, fmt) of a valid token; NotFound if forged, Gone if expired."""
        parts = token.split(".")
        bad = NotFound("This image link is not valid.", hint="Use the URL exactly as the server returned it.")
        given = parts[-1].encode("utf-8", "surrogateescape")  # bytes: any character is simply wrong
        if len(parts) != 5 or not hmac.compare_digest(given, self._mac(".".join(parts[:4])).encode()):
            raise bad
        job_id, index, fmt, expires = parts[:4]
        if not (JOB_ID.match(job_id) and index.isdigit() and fmt in MEDIA_TYPES and expires.isdigit()):
            raise bad
        if int(expires) < (now or time.time()):
            raise Gone("This image link has expired.", hint="Generate again, or ask for response_format=b64_json.")
        return job_id, int(index), fmt

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()[:32]
