"""Multipart forms of the image-upload endpoints, read with bounds."""

from __future__ import annotations

from fastapi import Request

from sdplay.errors import InvalidRequest


async def read_form(request: Request):
    """The multipart form, bounded: few files and fields, no text field over 64 KiB."""
    try:
        return await request.form(max_files=4, max_fields=40, max_part_size=64 * 1024)
    except Exception as exc:  # malformed multipart bodies raise several types
        hint = "Send multipart/form-data with an image file."
        raise InvalidRequest(f"Could not read the form: {exc}", hint=hint) from exc


def file_bytes(upload, field: str) -> bytes:
    from sdplay.image_input import MAX_INPUT_BYTES

    upload.file.seek(0)
    data = upload.file.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidRequest(
            f"{field} is over {MAX_INPUT_BYTES // 2**20} MiB.", field=field, hint="Send a smaller file."
        )
    return data
