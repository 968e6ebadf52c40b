"""`sdplay generate` with images in: init image, strength, mask and its options, outpainting, hires fix."""

import json
import subprocess
import sys

from PIL import Image


def sdplay(*args):
    return subprocess.run([sys.executable, "-m", "sdplay.cli.main", *args], capture_output=True, text=True)


def test_inpaint_outpaint_and_hires_from_the_command_line(tiny_models, tmp_path):
    img, mask = tmp_path / "in.jpg", tmp_path / "mask.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(img, quality=95)
    m = Image.new("L", (64, 48))
    m.paste(255, (0, 0, 32, 48))
    m.save(mask)
    base = ["--model", str(tiny_models["sd1"]), "--steps", "2", "--seed", "3", "--json"]
    inputs = ["--init-image", str(img), "--mask", str(mask), "--mask-blur", "2", "--masked-content", "latent noise"]
    res = sdplay("generate", "x", *base, *inputs, "--outpaint", "right=16", "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    out = Image.open(data["paths"][0])
    assert out.size == (80, 48)
    fields = out.text["parameters"]
    assert "Mask blur: 2" in fields and "Masked content: latent noise" in fields and "Outpaint: right=16" in fields
    res = sdplay("generate", "x", *base, "--size", "32x32", "--hires", "2", "--hires-upscaler", "Lanczos",
                 "--out", str(tmp_path / "b"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert Image.open(json.loads(res.stdout)["paths"][0]).size == (64, 64)


def test_bad_image_inputs_exit_2_with_a_message(tiny_models, tmp_path):
    img, small = tmp_path / "in.png", tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(img)
    Image.new("L", (32, 32)).save(small)
    base = ["generate", "x", "--model", str(tiny_models["sd1"]), "--steps", "1", "--out", str(tmp_path)]
    for extra, message in (
        (["--init-image", str(img), "--mask", str(small)], "32x32 but the image is 64x64"),
        (["--init-image", str(tmp_path / "missing.png")], "Cannot read --init-image"),
        (["--init-image", str(img), "--strength", "nan"], "denoising_strength"),
        (["--mask", str(small)], "need --init-image"),
    ):
        res = sdplay(*base, *extra)
        assert res.returncode == 2 and message in res.stderr, (extra, res.stderr)
        assert "Traceback" not in res.stderr
