"""Image-to-image and inpainting geometry, as A1111 does it: resize modes, mask blur and invert, outpainting
canvases, "only masked" crops, masked-content fills and pasting the original back outside the mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdplay.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

# A1111's resize_mode numbers and inpainting_fill numbers, in order.
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
FILLS = ("fill", "original", "latent noise", "latent nothing")
MAX_MASK_BLUR = 64
MAX_OUTPAINT = 2048


def resize_mode(value: Any) -> str:
    """A1111's number (0, 1, 2) or name -> the canonical name."""
    return _choice(value, RESIZE_MODES, "resize_mode")


def fill_mode(value: Any) -> str:
    """A1111's inpainting_fill number (0-3) or name -> the canonical name."""
    return _choice(value, FILLS, "inpainting_fill")


def _choice(value: Any, names: tuple[str, ...], field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value.strip().lower() in names:
        return value.strip().lower()
    choices = ", ".join(f"{i} or {n!r}" for i, n in enumerate(names))
    raise InvalidRequest(f"{field} must be one of {choices}; got {value!r}.", field=field)


def resize_image(img: Image.Image, width: int, height: int, mode: str = "just resize") -> Image.Image:
    """Fit an image to width x height: stretch it, crop the overflow (centred), or fit it and stretch its edges
    into the empty bands (A1111's "resize and fill")."""
    from PIL import Image

    if img.size == (width, height):
        return img.copy()
    if mode == "just resize":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    scale = (max if mode == "crop and resize" else min)(width / img.width, height / img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    inner = img.resize((w, h), Image.Resampling.LANCZOS)
    out = Image.new(img.mode, (width, height))
    x, y = (width - w) // 2, (height - h) // 2
    out.paste(inner, (x, y))
    if mode == "resize and fill":
        _stretch_edges(out, inner, (x, y))
    return out


def _stretch_edges(out: Image.Image, inner: Image.Image, at: tuple[int, int]) -> None:
    """Fill the bands around `inner` (pasted at `at`) by stretching its outermost rows or columns."""
    from PIL import Image

    x, y = at
    w, h = inner.size
    bands = [
        ((0, 0, w, 1), (x, 0, x + w, y)),  # top row -> band above
        ((0, h - 1, w, h), (x, y + h, x + w, out.height)),  # bottom row -> band below
        ((0, 0, 1, h), (0, y, x, y + h)),  # left column -> band at the left
        ((w - 1, 0, w, h), (x + w, y, out.width, y + h)),  # right column -> band at the right
    ]
    for src, (x0, t, r, b) in bands:
        if r > x0 and b > t:
            out.paste(inner.crop(src).resize((r - x0, b - t), Image.Resampling.BILINEAR), (x0, t))
    corners = [
        ((0, 0), (0, 0, x, y)),
        ((w - 1, 0), (x + w, 0, out.width, y)),
        ((0, h - 1), (0, y + h, x, out.height)),
        ((w - 1, h - 1), (x + w, y + h, out.width, out.height)),
    ]
    for pixel, (x0, t, r, b) in corners:
        if r > x0 and b > t:
            out.paste(Image.new(out.mode, (r - x0, b - t), inner.getpixel(pixel)), (x0, t))


def prepare_mask(mask: Image.Image, blur: int = 4, invert: bool = False) -> Image.Image:
    """Greyscale mask (white = repaint), inverted if asked, with a Gaussian edge of `blur` pixels."""
    from PIL import ImageFilter, ImageOps

    if not 0 <= blur <= MAX_MASK_BLUR:
        raise InvalidRequest(f"mask_blur must be between 0 and {MAX_MASK_BLUR}, got {blur}.", field="mask_blur")
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask


@dataclass(frozen=True)
class Outpaint:
    """Pixels to add on each side of the canvas."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def validate(self) -> Outpaint:
        for side in ("left", "right", "top", "bottom"):
            n = getattr(self, side)
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_OUTPAINT:
                raise InvalidRequest(
                    f"outpaint {side} must be 0 to {MAX_OUTPAINT} pixels, got {n!r}.", field="outpaint"
                )
        if not any((self.left, self.right, self.top, self.bottom)):
            raise InvalidRequest(
                "outpaint adds no pixels.", field="outpaint", hint="Give at least one side, e.g. right=128."
            )
        return self


def parse_outpaint(text: str) -> Outpaint:
    """ "right=128,top=64" or "all=64" or "64" (all sides) -> Outpaint."""
    sides: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.rpartition("=")
        key = key.strip().lower() or "all"
        try:
            n = int(value)
        except ValueError:
            raise InvalidRequest(f"outpaint: {part!r} is not SIDE=PIXELS.", field="outpaint",
                                 hint="Write e.g. right=128,top=64 or all=64.") from None  # fmt: skip
        names = ("left", "right", "top", "bottom") if key == "all" else (key,)
        for name in names:
            if name not in ("left", "right", "top", "bottom"):
                raise InvalidRequest(f"outpaint: unknown side {key!r}.", field="outpaint",
                                     hint="Sides are left, right, top, bottom or all.")  # fmt: skip
            sides[name] = n
    return Outpaint(**sides).validate()


def outpaint_canvas(img: Image.Image, extend: Outpaint, overlap: int = 0) -> tuple[Image.Image, Image.Image]:
    """A larger canvas with the image in it (new area filled by stretching the edges) and the mask of the new
    area, reaching `overlap` pixels into the image so that the seam is repainted too."""
    from PIL import Image, ImageDraw

    width, height = img.width + extend.left + extend.right, img.height + extend.top + extend.bottom
    canvas = Image.new(img.mode, (width, height))
    canvas.paste(img, (extend.left, extend.top))
    _stretch_edges(canvas, img, (extend.left, extend.top))
    mask = Image.new("L", (width, height), 255)
    keep = [extend.left + (overlap if extend.left else 0), extend.top + (overlap if extend.top else 0),
            extend.left + img.width - (overlap if extend.right else 0),
            extend.top + img.height - (overlap if extend.bottom else 0)]  # fmt: skip
    if keep[2] > keep[0] and keep[3] > keep[1]:
        ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    return canvas, mask


def crop_region(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int] | None:
    """The box around the mask's white pixels, grown by `padding`, then widened or heightened to the target's
    aspect ratio (width / height) within the image; None if the mask is empty."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x0, t, r, b = box
    x0, t = max(x0 - padding, 0), max(t - padding, 0)
    r, b = min(r + padding, mask.width), min(b + padding, mask.height)
    w, h = r - x0, b - t
    if w / h < aspect:  # too narrow: widen
        x0, r = _grow(x0, r, round(h * aspect), mask.width)
    else:  # too flat: heighten
        t, b = _grow(t, b, round(w / aspect), mask.height)
    return x0, t, r, b


def _grow(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to length `want` around its centre, shifted to stay within [0, limit)."""
    want = min(want, limit)
    lo -= (want - (hi - lo)) // 2
    lo = min(max(lo, 0), limit - want)
    return lo, lo + want


@dataclass
class InpaintInput:
    """One prepared image task: what the model sees, and how to turn its output back into the user's image."""

    init: Image.Image  # RGB at the working size
    mask: Image.Image | None  # L at the working size (blurred), white = repaint
    original: Image.Image  # RGB the output is composed over (the user's image, resized unless only-masked)
    overlay_mask: Image.Image | None  # L at the original's size: where generated pixels show through
    box: tuple[int, int, int, int] | None = None  # where the working image goes back (only masked)

    def finish(self, generated: Image.Image) -> Image.Image:
        """The generated image pasted back into the original, original pixels kept outside the blurred mask."""
        from PIL import Image

        if self.overlay_mask is None:
            return generated
        out = self.original.copy()
        if self.box is not None:
            x0, t, r, b = self.box
            out.paste(generated.resize((r - x0, b - t), Image.Resampling.LANCZOS), (x0, t))
        else:
            out = generated.convert("RGB")
        return Image.composite(out, self.original, self.overlay_mask)


def prepare_inpaint(
    image: Image.Image,
    mask: Image.Image | None,
    width: int,
    height: int,
    *,
    mode: str = "just resize",
    blur: int = 4,
    invert: bool = False,
    fill: str = "original",
    only_masked: bool = False,
    padding: int = 32,
) -> InpaintInput:
    """Steps of A1111's img2img preparation: mask blur/invert, only-masked crop or resize, "fill" content."""
    if mask is None:
        return InpaintInput(resize_image(image, width, height, mode), None, image, None)
    mask = prepare_mask(mask, blur, invert)
    if only_masked:
        box = crop_region(mask, padding, width / height)
        if box is not None:
            init = resize_image(image.crop(box), width, height, "resize and fill")
            work_mask = resize_image(mask.crop(box), width, height, "resize and fill")
            return InpaintInput(_filled(init, work_mask, fill), work_mask, image, mask, box)
    init, work_mask = resize_image(image, width, height, mode), resize_image(mask, width, height, mode)
    return InpaintInput(_filled(init, work_mask, fill), work_mask, init, work_mask)


def _filled(img: Image.Image, mask: Image.Image, fill: str) -> Image.Image:
    return fill_masked(img, mask) if fill == "fill" else img


def fill_masked(img: Image.Image, mask: Image.Image) -> Image.Image:
    """The masked area painted with the colours around it (A1111's "fill"): a normalised blur of the kept pixels
    at growing radii, each layer filling what the previous could not reach."""
    import numpy as np
    from PIL import Image

    keep = (np.asarray(mask, np.float32) < 128).astype(np.float32)
    if keep.all() or not keep.any():
        return img.copy()
    rgb = np.asarray(img.convert("RGB"), np.float32)
    out, todo = rgb * keep[..., None], 1.0 - keep
    for radius in (4, 16, 64, 256):
        wsum = _box_blur(keep, radius)
        layer = np.stack([_box_blur(rgb[..., c] * keep, radius) for c in range(3)], -1)
        reached = (wsum > 1e-3) & (todo > 0)
        out[reached] = layer[reached] / wsum[reached, None]
        todo = todo * ~reached
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def _box_blur(arr, radius: int):
    """Mean over a (2r+1) square window, edges clamped; separable running sums."""
    import numpy as np

    for axis in (0, 1):
        n = arr.shape[axis]
        padded = np.concatenate([np.zeros_like(arr.take([0], axis)), arr], axis).cumsum(axis)
        hi = np.minimum(np.arange(n) + radius + 1, n)
        lo = np.maximum(np.arange(n) - radius, 0)
        arr = (padded.take(hi, axis) - padded.take(lo, axis)) / (2 * radius + 1)
    return arr


def latent_fill(latents: Any, mask: Any, fill: str, noise: Any) -> Any:
    """A1111's "latent noise" (random latents under the mask) and "latent nothing" (zeros under the mask);
    `mask` is (B, 1, h, w) with 1 = repaint."""
    if fill == "latent noise":
        return latents * (1 - mask) + noise * mask
    if fill == "latent nothing":
        return latents * (1 - mask)
    return latents
