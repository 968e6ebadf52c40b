"""PNG output: A1111-compatible `parameters` text plus a JSON `sdplay` chunk; atomic, never overwriting."""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from sdplay.errors import InvalidRequest, OutputNotWritable
from sdplay.samplers import infotext_fields
from sdplay.types import GenerationResult

PARAMETERS_KEY = "parameters"
JSON_KEY = "sdplay"


def a1111_parameters(prompt: str, negative: str, fields: dict[str, Any]) -> str:
    """The text A1111 writes into its PNGs (and reads back in PNG Info)."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def _quote(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(text) if any(c in text for c in ',:\n"') else text


def parameters_for(result: GenerationResult, index: int) -> str:
    req, meta = result.request, result.metadata
    fields = {
        "Steps": req.steps,
        **infotext_fields(req.sampler or ""),
        "CFG scale": req.guidance,
        "Seed": result.seeds[index],
        "Size": f"{req.width}x{req.height}",
        "Model": meta.get("model"),
        "VAE hash": meta.get("vae_hash"),
        "VAE": meta.get("vae"),
        **image_input_fields(req, index),
        "Clip skip": meta.get("clip_skip") if (meta.get("clip_skip") or 1) > 1 else None,
        "Lora hashes": meta.get("lora_hashes"),
        "TI hashes": meta.get("ti_hashes"),
        "Random weights": "True" if meta.get("random_weights") else None,
        "Version": f"sdplay {meta.get('versions', {}).get('sdplay', '')}".strip(),
    }
    return a1111_parameters(req.prompt, req.negative_prompt, fields)


def image_input_fields(req: Any, index: int = 0) -> dict[str, Any]:
    """A1111's infotext fields for image-to-image, inpainting, outpainting, hires fix and the refiner, of the
    request's image `index` (its own init image when there are several)."""
    fields: dict[str, Any] = {}
    if req.init_image is not None:
        from sdplay.image_input import image_hash

        fields["Denoising strength"] = req.strength
        fields["Init image hash"] = image_hash(req.init_image_for(index))[:10]
        if req.resize_mode != "just resize":
            fields["Resize mode"] = req.resize_mode.capitalize()
    if req.task == "inpaint":
        fields |= {"Mask blur": req.mask_blur, "Masked content": req.inpaint_fill}
        if req.mask is not None:
            fields["Mask hash"] = image_hash(req.mask)[:10]
        if req.mask_invert:
            fields["Mask mode"] = "Inpaint not masked"
        if req.inpaint_full_res:
            fields |= {"Inpaint area": "Only masked", "Masked area padding": req.inpaint_padding}
    if req.outpaint is not None:
        o = req.outpaint
        fields["Outpaint"] = " ".join(f"{k}={v}" for k, v in vars(o).items() if v)
    if req.hires is not None:
        hr = req.hires
        fields["Denoising strength"] = hr.strength
        fields["Hires resize" if hr.width or hr.height else "Hires upscale"] = (
            f"{hr.width}x{hr.height}" if hr.width or hr.height else hr.scale
        )
        fields |= {"Hires steps": hr.steps or None, "Hires upscaler": hr.upscaler}
    if req.refiner:
        fields |= {"Refiner": req.refiner, "Refiner switch at": req.refiner_switch_at}
    return fields


def metadata_for(result: GenerationResult, index: int) -> dict[str, Any]:
    """The full record of one image: its request, its seed, and the environment that made it."""
    return {
        "request": result.request.to_dict() | {"seed": result.seeds[index], "n_images": 1},
        "seed": result.seeds[index],
        "batch_seeds": result.seeds,
        "index": index,
        "nsfw": result.nsfw[index] if result.nsfw else None,
        "telemetry": result.telemetry,
        **result.metadata,
    }


def png_bytes(result: GenerationResult, index: int, extra_text: dict[str, str] | None = None) -> bytes:
    """One image of a result as PNG bytes with both metadata chunks (and `extra_text` chunks, e.g. a workflow)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_for(result, index))
    info.add_itxt(JSON_KEY, json.dumps(metadata_for(result, index), default=str))
    for key, text in (extra_text or {}).items():
        if key not in (PARAMETERS_KEY, JSON_KEY):
            info.add_text(key, text)
    buf = io.BytesIO()
    result.images[index].save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def ensure_writable(out_dir: Path) -> Path:
    """Create the output folder if needed; fail before any work if it cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(
            f"Cannot write to {out_dir}: {exc.strerror or exc}.", field="out", hint="Choose another folder with --out."
        ) from exc
    return out_dir


def save_png(
    result: GenerationResult, index: int, out_dir: Path | str, extra_text: dict[str, str] | None = None
) -> Path:
    """Write one image atomically under a name that never collides; return its path."""
    out_dir = Path(out_dir)
    data = png_bytes(result, index, extra_text)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{result.seeds[index]}-{_slug(result.request.prompt)}"
    tmp = out_dir / f".{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_bytes(data)
        for n in range(10_000):
            path = out_dir / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
            try:
                os.link(tmp, path)  # fails if the name exists: never overwrites
                return path
            except FileExistsError:
                continue
        raise OutputNotWritable(f"Too many files named {stem}*.png in {out_dir}.")
    except OSError as exc:
        raise OutputNotWritable(f"Cannot write to {out_dir}: {exc}", field="out") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "image"


def read_png_info(source: Path | str | bytes) -> dict[str, Any]:
    """Both metadata chunks of a PNG: the A1111 text, its parsed fields, and sdplay's JSON.

    Only the PNG's chunks are read (no pixel is decoded), with bounded decompression; see sdplay.pngtext."""
    from sdplay.pngtext import read_png_text

    if not isinstance(source, bytes):
        try:
            source = Path(source).read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"Cannot read {source}: {exc.strerror or exc}.", field="image") from exc
    png = read_png_text(source)
    params = png.text.get(PARAMETERS_KEY)
    record = _json_chunk(png.text[JSON_KEY]) if JSON_KEY in png.text else None
    fields = parse_parameters(params) if params else {}
    return {"size": (png.width, png.height), "parameters": params, "fields": fields, "sdplay": record}


def _json_chunk(text: str) -> Any:
    """sdplay's JSON chunk, refusing what is not strict JSON (NaN, lone surrogates, absurd nesting)."""
    try:
        record = json.loads(text, parse_constant=_no_constant)
        json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise InvalidRequest(
            f"The image's {JSON_KEY!r} text chunk is not valid JSON.",
            field="image",
            hint="It was not written by sdplay, or it was edited; the 'parameters' chunk may still be read.",
        ) from exc
    return record


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse A1111's parameters text into prompt, negative prompt and the key: value fields."""
    lines = text.strip().split("\n")
    last = lines[-1] if len(lines) > 1 or re.search(r"\bSteps: ", lines[-1]) else ""
    body = lines[:-1] if last else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line.removeprefix("Negative prompt:").strip()
        (negative if in_negative else prompt).append(line)
    fields = {k: _unquote(k, v) for k, v in re.findall(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)', last)}
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), **fields}


def _unquote(key: str, value: str) -> str:
    """A field value as written by a1111_parameters: plain, or a JSON string when it holds , : " or a newline."""
    if not value.startswith('"'):
        return value
    try:
        text = json.loads(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"The value of {key!r} in the parameters text is a malformed quoted string: {value[:40]!r}.",
            field="image",
            hint="Quoted values must be JSON strings, as A1111 writes them (close the quote, escape backslashes).",
        ) from exc
    if not isinstance(text, str):
        raise InvalidRequest(f"The value of {key!r} in the parameters text is not a string.", field="image")
    return text
