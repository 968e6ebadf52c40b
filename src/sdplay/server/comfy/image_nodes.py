"""Nodes with images in: LoadImage, LoadImageMask, ImageScale(By), VAEEncode(ForInpaint), SetLatentNoiseMask,
LatentUpscale(By). They only shape the request of the sampler they feed: image-to-image, inpainting, hires fix."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image, ImageFilter

from sdplay.errors import SdplayError
from sdplay.server.comfy.nodes import LATENT_METHODS
from sdplay.server.comfy.plan import Context, Encoded, Mask, Pixels, Plan, Sampled, Upscaled, unsupported

RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _open(ctx: Context, name: str) -> Image.Image:
    from sdplay.image_input import decode_image

    if ctx.open_input is None:
        raise unsupported("no input folder here;", "upload images with POST /upload/image.", input_name="image")
    try:
        return decode_image(ctx.open_input(name), "image", keep_alpha=True)
    except SdplayError as exc:
        raise unsupported(f"{name!r} cannot be read:", str(exc), input_name="image") from exc


def _invert(band: Image.Image) -> Image.Image:
    return band.point(lambda v: 255 - v)


def load_image(nid, a, plan: Plan, ctx: Context) -> tuple:
    """(IMAGE, MASK): the picture, and its transparent pixels as the area to repaint (as ComfyUI reads them)."""
    img = _open(ctx, a["image"])
    alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
    return Pixels(img.convert("RGB")), Mask(_invert(alpha))


def load_image_mask(nid, a, plan: Plan, ctx: Context) -> tuple:
    img = _open(ctx, a["image"]).convert("RGBA")
    channel = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[a["channel"]]
    band = img.getchannel(channel)
    return (Mask(_invert(band) if channel == "A" else band),)


def _pixels(a: dict[str, Any], name: str) -> Image.Image:
    value = a[name]
    if not isinstance(value, Pixels):
        raise unsupported(
            f"{name} is a generated image;",
            "this server takes loaded images here only (for a second pass, upscale the latent: LatentUpscale).",
            input_name=name,
        )
    return value.image


def image_scale(nid, a, plan, ctx) -> tuple:
    img = _pixels(a, "image")
    width = a["width"] or max(1, img.width * a["height"] // img.height)
    height = a["height"] or max(1, img.height * width // img.width)
    if a["crop"] == "center":
        scale = max(width / img.width, height / img.height)
        w, h = round(width / scale), round(height / scale)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return (Pixels(img.resize((width, height), RESAMPLE[a["upscale_method"]])),)


def image_scale_by(nid, a, plan, ctx) -> tuple:
    img = _pixels(a, "image")
    size = (max(1, round(img.width * a["scale_by"])), max(1, round(img.height * a["scale_by"])))
    return (Pixels(img.resize(size, RESAMPLE[a["upscale_method"]])),)


def _crop8(img: Image.Image) -> Image.Image:
    """As ComfyUI's VAEEncode: the top-left part whose sides are multiples of 8."""
    if img.width < 8 or img.height < 8:
        raise unsupported(f"the image is {img.width}x{img.height};", "it must be at least 8x8.", input_name="pixels")
    return img.crop((0, 0, img.width // 8 * 8, img.height // 8 * 8))


def vae_encode(nid, a, plan, ctx) -> tuple:
    return (Encoded(_crop8(_pixels(a, "pixels")), a["vae"].model),)


def vae_encode_for_inpaint(nid, a, plan, ctx) -> tuple:
    """The masked area starts from nothing (sdplay's 'latent nothing'), the mask grown by `grow_mask_by` pixels."""
    img = _crop8(_pixels(a, "pixels"))
    mask = a["mask"].image.resize(img.size)
    if a["grow_mask_by"]:
        mask = mask.filter(ImageFilter.MaxFilter(a["grow_mask_by"] * 2 + 1))
    return (Encoded(img, a["vae"].model, mask, "latent nothing"),)


def set_latent_noise_mask(nid, a, plan, ctx) -> tuple:
    samples = a["samples"]
    if not isinstance(samples, Encoded):
        raise unsupported("samples is not an encoded image;", "mask a VAEEncode's LATENT.", input_name="samples")
    return (replace(samples, mask=a["mask"].image.resize(samples.image.size), fill="original"),)


def _sampled(a: dict[str, Any], plan: Plan) -> Sampled:
    samples = a["samples"]
    if not isinstance(samples, Sampled) or plan.samplings[samples.index].request.task != "txt2img":
        raise unsupported(
            "samples is not the latent of a text-to-image sampler;",
            "upscale the LATENT of a KSampler that starts from an Empty Latent Image.",
            input_name="samples",
        )
    return samples


def latent_upscale(nid, a, plan, ctx) -> tuple:
    s = _sampled(a, plan)
    first = plan.samplings[s.index].request
    width, height = a["width"] or first.width, a["height"] or first.height
    if a["crop"] != "disabled":
        raise unsupported(
            f"crop {a['crop']!r};", "sdplay's hires fix scales the whole latent: use 'disabled'.", input_name="crop"
        )
    return (Upscaled(s.index, s.model, width // 8 * 8, height // 8 * 8, LATENT_METHODS[a["upscale_method"]]),)


def latent_upscale_by(nid, a, plan, ctx) -> tuple:
    s = _sampled(a, plan)
    first = plan.samplings[s.index].request
    size = (int(first.width * a["scale_by"]) // 8 * 8, int(first.height * a["scale_by"]) // 8 * 8)
    return (Upscaled(s.index, s.model, *size, LATENT_METHODS[a["upscale_method"]]),)


NODES = {
    "LoadImage": load_image,
    "LoadImageMask": load_image_mask,
    "ImageScale": image_scale,
    "ImageScaleBy": image_scale_by,
    "VAEEncode": vae_encode,
    "VAEEncodeForInpaint": vae_encode_for_inpaint,
    "SetLatentNoiseMask": set_latent_noise_mask,
    "LatentUpscale": latent_upscale,
    "LatentUpscaleBy": latent_upscale_by,
}
