"""A request's image inputs -> what the model works on: the working size, the outpainting canvas, the mask."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sdplay.masking import InpaintInput, fill_mode, outpaint_canvas, prepare_inpaint, resize_mode
from sdplay.types import MAX_PIXELS, MAX_SIDE

if TYPE_CHECKING:
    from PIL import Image

    from sdplay.types import GenerationRequest


def canvas_size(req: GenerationRequest) -> tuple[int, int]:
    """The size of the image to edit, outpainting included."""
    w, h = req.init_image.size
    if req.outpaint is not None:
        o = req.outpaint
        w, h = w + o.left + o.right, h + o.top + o.bottom
    return w, h


def working_size(req: GenerationRequest, native: int) -> tuple[int, int]:
    """The size the model runs at: as asked; else the image's (outpainted) size in multiples of 8 within the
    pixel limit; "only masked" without a size works at the model's native size."""
    if req.init_image is None or (req.width and req.height):
        return req.width or native, req.height or native
    if req.inpaint_full_res and req.task == "inpaint" and not (req.width or req.height):
        return native, native
    w, h = canvas_size(req)
    if req.width or req.height:  # one side given: keep the image's aspect
        ratio = (req.width / w) if req.width else (req.height / h)
        w, h = w * ratio, h * ratio
    shrink = min(1.0, math.sqrt(MAX_PIXELS / (w * h)), MAX_SIDE / max(w, h))
    return _multiple_of_8(w * shrink), _multiple_of_8(h * shrink)


def _multiple_of_8(x: float) -> int:
    return max(8, int(x) // 8 * 8)


def prepare_inputs(req: GenerationRequest) -> list[InpaintInput]:
    """One prepared input per init image (image k of the request uses input k % count)."""
    return [prepare_input(req, img) for img in req.init_images]


def prepare_input(req: GenerationRequest, init_image: Image.Image | None = None) -> InpaintInput:
    """Outpainting canvas, then A1111's preparation (resize, mask blur/invert, only-masked crop, fill), of the
    request's (first) init image or of `init_image`."""
    from PIL import ImageChops, ImageOps

    image, mask = (init_image or req.init_image).convert("RGB"), req.mask
    if mask is not None and req.mask_invert:
        mask = ImageOps.invert(mask.convert("L"))
    if req.outpaint is not None:
        image, new_area = outpaint_canvas(image, req.outpaint, overlap=req.mask_blur)
        if mask is not None:
            o = req.outpaint
            grown = new_area.copy()
            grown.paste(mask.convert("L"), (o.left, o.top))
            mask = ImageChops.lighter(grown, new_area)
        else:
            mask = new_area
    return prepare_inpaint(
        image,
        mask,
        req.width,
        req.height,
        mode=resize_mode(req.resize_mode),
        blur=req.mask_blur,
        invert=False,
        fill=fill_mode(req.inpaint_fill),
        only_masked=req.inpaint_full_res,
        padding=req.inpaint_padding,
    )
