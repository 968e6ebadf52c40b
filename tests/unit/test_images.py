"""PNG metadata round-trips (A1111 `parameters` + sdplay JSON); writes are atomic and never collide."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from sdplay.errors import OutputNotWritable
from sdplay.images import a1111_parameters, ensure_writable, parse_parameters, read_png_info, save_png
from sdplay.types import GenerationRequest


@pytest.fixture(scope="module")
def result(engine, tiny_models):
    request = GenerationRequest(
        prompt="red heart, big", negative_prompt="blurry", model=str(tiny_models["sd1"]),
        width=64, height=64, steps=2, seed=42, n_images=2, sampler="DPM++ 2M Karras",
    )  # fmt: skip
    return engine.generate(request)


def test_metadata_round_trip(result, tmp_path):
    path = save_png(result, 1, tmp_path)
    info = read_png_info(path)
    fields = info["fields"]
    assert fields["prompt"] == "red heart, big" and fields["negative_prompt"] == "blurry"
    assert fields["Seed"] == "43" and fields["Steps"] == "2" and fields["Size"] == "64x64"
    assert fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras"
    record = info["sdplay"]
    assert record["seed"] == 43 and record["request"]["seed"] == 43
    assert record["request"]["prompt"] == "red heart, big"
    assert record["device"]["id"] == "cpu" and record["optimisation"]["attention"] == "sdpa"
    assert record["versions"]["diffusers"]
    assert Image.open(path).size == (64, 64)


def test_names_never_collide(result, tmp_path):
    paths = {save_png(result, 0, tmp_path) for _ in range(5)}
    assert len(paths) == 5
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_parameters_parser_handles_quoted_values():
    text = a1111_parameters("a, b", "", {"Steps": 20, "Model": "my, model", "CFG scale": 7.5})
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "a, b" and parsed["Model"] == "my, model" and parsed["CFG scale"] == "7.5"


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputNotWritable, match="--out"):
        ensure_writable(blocker / "images")


def test_cli_info_reads_both_chunks(result, tmp_path):
    path = save_png(result, 0, tmp_path)
    out = subprocess.run([sys.executable, "-m", "sdplay.cli.main", "info", str(path), "--json"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    data = json.loads(out)
    assert data["fields"]["Seed"] == "42" and data["sdplay"]["model"] == result.metadata["model"]
