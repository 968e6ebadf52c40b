"""Images in: safe decoding (size checked from the header first), conversions, masks, resize modes, outpainting
canvases, only-masked crops and the paste-back that keeps pixels outside the mask."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sdplay.errors import InvalidRequest
from sdplay.image_input import alpha_mask, decode_base64, decode_image, decode_mask, image_hash
from sdplay.masking import (
    Outpaint,
    crop_region,
    fill_masked,
    outpaint_canvas,
    parse_outpaint,
    prepare_inpaint,
    prepare_mask,
    resize_image,
)


def encode(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def halves(w=64, h=64, left=(255, 0, 0), right=(0, 0, 255)):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2], arr[:, w // 2 :] = left, right
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_formats_decode_to_rgb(fmt):
    img = decode_image(encode(halves(), fmt))
    assert img.mode == "RGB" and img.size == (64, 64)
    left, right = np.asarray(img)[:, 8], np.asarray(img)[:, 56]
    assert left[:, 0].mean() > 200 and right[:, 2].mean() > 200


def test_not_an_image_and_other_formats_are_refused():
    with pytest.raises(InvalidRequest, match="not a PNG, JPEG or WebP"):
        decode_image(b"hello world, not an image")
    with pytest.raises(InvalidRequest, match="not a PNG, JPEG or WebP"):
        decode_image(encode(halves(), "BMP"))
    with pytest.raises(InvalidRequest, match="empty"):
        decode_image(b"")


def _png_claiming(width, height):
    """A valid tiny PNG whose header claims another size: decoding it would fail, so only a header check passes."""
    data = bytearray(encode(Image.new("RGB", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    with pytest.raises(InvalidRequest, match="pixels") as exc:
        decode_image(_png_claiming(50_000, 50_000))
    assert "limit" in str(exc.value) and "Scale the image down" in str(exc.value)
    with pytest.raises(InvalidRequest, match="5000x4000"):
        decode_image(_png_claiming(5000, 4000))
    with pytest.raises(InvalidRequest, match="damaged"):  # within the limit: decoded, and the data is missing
        decode_image(_png_claiming(64, 64))


def test_exif_orientation_is_honoured():
    img = halves(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert arr[5, :, 0].mean() > 200 and arr[35, :, 2].mean() > 200  # red on top after the turn


def test_palette_rgba_cmyk_and_16_bit_are_converted():
    pal = halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert decode_image(encode(pal)).mode == "RGB"
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    flat = decode_image(encode(rgba))
    assert flat.mode == "RGB" and np.asarray(flat).min() == 255  # transparency over white
    kept = decode_image(encode(rgba), keep_alpha=True)
    assert kept.mode == "RGBA" and alpha_mask(kept).getextrema() == (255, 255)
    cmyk = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[..., 0].mean() > 200
    deep = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    grey = decode_image(encode(deep))
    assert grey.mode == "RGB" and abs(int(np.asarray(grey)[0, 0, 0]) - 128) <= 1


def test_base64_data_url_and_bare():
    raw = encode(halves())
    text = base64.b64encode(raw).decode()
    assert decode_base64(text) == raw
    assert decode_base64("data:image/png;base64," + text) == raw
    assert decode_base64(text.rstrip("=")) == raw
    with pytest.raises(InvalidRequest, match="base64"):
        decode_base64("not base64 at all!!")


def test_mask_size_mismatch_says_what_is_expected():
    with pytest.raises(InvalidRequest, match="64x32 but the image is 64x64") as exc:
        decode_mask(encode(Image.new("L", (64, 32))), size=(64, 64))
    assert "Send a 64x64 mask" in str(exc.value)


def test_mask_from_alpha_and_from_grey():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 4, 8))
    mask = decode_mask(encode(rgba), size=(8, 8))
    assert np.asarray(mask)[:, :4].min() == 255 and np.asarray(mask)[:, 4:].max() == 0
    assert np.asarray(decode_mask(encode(Image.new("L", (8, 8), 200))))[0, 0] == 200


def test_blur_and_invert():
    mask = Image.new("L", (32, 32))
    mask.paste(255, (0, 0, 16, 32))
    hard = np.asarray(prepare_mask(mask, 0, invert=True))
    assert hard[:, :16].max() == 0 and hard[:, 16:].min() == 255
    soft = np.asarray(prepare_mask(mask, 4))
    assert 0 < soft[0, 16] < 255 and soft[0, 0] == 255 and soft[0, 31] == 0
    with pytest.raises(InvalidRequest, match="mask_blur"):
        prepare_mask(mask, 100)


def test_resize_modes():
    wide = halves(128, 64)
    assert resize_image(wide, 64, 64).size == (64, 64)
    crop = np.asarray(resize_image(wide, 64, 64, "crop and resize")).astype(int)
    assert crop[:, 2, 0].mean() > 200 and crop[:, 61, 2].mean() > 200  # the centre kept, both halves visible
    tall = halves(32, 64)
    filled = np.asarray(resize_image(tall, 64, 64, "resize and fill")).astype(int)
    assert filled[:, 1, 0].mean() > 200 and filled[:, 62, 2].mean() > 200  # bands are stretched edges, not black
    assert filled[:, 16:48].sum() > 0


def test_outpaint_canvas_keeps_the_image_and_masks_the_new_area():
    img = halves(32, 32)
    canvas, mask = outpaint_canvas(img, Outpaint(right=16, top=8), overlap=2)
    assert canvas.size == (48, 40) and mask.size == (48, 40)
    assert np.array_equal(np.asarray(canvas)[8:, :32], np.asarray(img))
    m = np.asarray(mask)
    assert m[:8].min() == 255 and m[:, 32:].min() == 255
    assert m[10:, :30].max() == 0 and m[10:, 30:32].min() == 255  # 2 px of overlap into the image
    assert np.asarray(canvas)[20, 40, 2] == 255  # the right band repeats the right edge (blue)


def test_parse_outpaint():
    assert parse_outpaint("right=128,top=64") == Outpaint(right=128, top=64)
    assert parse_outpaint("32") == Outpaint(32, 32, 32, 32)
    with pytest.raises(InvalidRequest, match="unknown side"):
        parse_outpaint("middle=3")
    with pytest.raises(InvalidRequest, match="no pixels"):
        parse_outpaint("all=0")


def test_crop_region_pads_and_matches_the_aspect():
    mask = Image.new("L", (200, 100))
    mask.paste(255, (90, 40, 110, 60))
    x0, t, r, b = crop_region(mask, padding=10, aspect=2.0)
    assert x0 <= 80 and r >= 120 and t <= 30 and b >= 70
    assert abs((r - x0) / (b - t) - 2.0) < 0.05 and x0 >= 0 and r <= 200 and t >= 0 and b <= 100
    assert crop_region(Image.new("L", (10, 10)), 4, 1.0) is None


def test_pixels_outside_the_blurred_mask_are_the_originals():
    img = halves(64, 64)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 32, 64))
    task = prepare_inpaint(img, mask, 64, 64, blur=4)
    out = np.asarray(task.finish(Image.new("RGB", (64, 64), (0, 255, 0)))).astype(int)
    untouched = np.asarray(task.overlay_mask) == 0
    assert untouched[:, 48:].all()
    assert np.array_equal(out[untouched], np.asarray(img).astype(int)[untouched])
    assert out[:, :16, 1].min() == 255  # the repainted area is the generated image


def test_only_masked_works_on_the_crop_and_pastes_it_back():
    img = halves(128, 128)
    mask = Image.new("L", (128, 128))
    mask.paste(255, (100, 100, 116, 116))
    task = prepare_inpaint(img, mask, 64, 64, blur=0, only_masked=True, padding=8)
    assert task.init.size == (64, 64) and task.box is not None
    x0, _, r, _ = task.box
    assert x0 <= 92 and r >= 124 and r <= 128
    out = task.finish(Image.new("RGB", (64, 64), (0, 255, 0)))
    arr = np.asarray(out).astype(int)
    assert out.size == (128, 128)
    assert arr[108, 108].tolist() == [0, 255, 0] and arr[10, 10].tolist() == [255, 0, 0]


def test_fill_paints_the_mask_with_surrounding_colours():
    img = Image.new("RGB", (64, 64), (0, 0, 255))
    img.paste((255, 255, 255), (16, 16, 48, 48))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    filled = np.asarray(fill_masked(img, mask)).astype(int)
    assert filled[32, 32, 2] > 200 and filled[32, 32, 0] < 60
    assert np.array_equal(filled[:16], np.asarray(img)[:16])


def test_image_hash_follows_pixels_not_encoding():
    img = halves()
    assert image_hash(decode_image(encode(img, "PNG"))) == image_hash(decode_image(encode(img, "WEBP", lossless=True)))
    assert image_hash(img) != image_hash(halves(left=(250, 0, 0)))
