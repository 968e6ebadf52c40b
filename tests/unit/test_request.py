"""Every bad parameter gets an InvalidRequest naming the field and what to do."""

import math

import pytest

from sdplay.catalog import resolve
from sdplay.cli.common import parse_size
from sdplay.devices import resolve_device, resolve_dtype
from sdplay.errors import DeviceNotAvailable, InvalidRequest, ModelNotAvailable
from sdplay.samplers import get_sampler
from sdplay.types import GenerationRequest


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"width": 100}, "width", "multiple of 8"),
        ({"height": 513}, "height", "Use 512 or 520"),
        ({"width": 4096, "height": 4096}, "width", "over the limit"),
        ({"steps": 0}, "steps", "between 1 and 150"),
        ({"steps": 1000}, "steps", "between 1 and 150"),
        ({"guidance": math.nan}, "guidance", "between 0 and 30"),
        ({"guidance": -1.0}, "guidance", "between 0 and 30"),
        ({"guidance": math.inf}, "guidance", "between 0 and 30"),
        ({"n_images": 0}, "n_images", "between 1 and 16"),
        ({"n_images": 100}, "n_images", "between 1 and 16"),
        ({"seed": -2}, "seed", "between -1"),
        ({"seed": 2**40}, "seed", "between -1"),
        ({"steps": 2.5}, "steps", "whole number"),
        ({"prompt": None}, "prompt", "must be text"),
        ({"prompt": "x" * 20_000}, "prompt", "limit"),
    ],
)
def test_bad_request_fields(changes, field, words):
    with pytest.raises(InvalidRequest) as err:
        GenerationRequest(prompt="a cat").with_(**changes).validate()
    assert err.value.field == field
    assert words in str(err.value)


def test_good_request_passes():
    req = GenerationRequest(prompt="a cat", width=512, height=768, steps=20, guidance=7.5, seed=3, n_images=4)
    assert req.validate() is req


def test_unknown_sampler_lists_valid_ones():
    with pytest.raises(InvalidRequest, match="Euler a"):
        get_sampler("Eular")


def test_split_sampler_and_schedule():
    assert get_sampler("DPM++ 2M", "Karras").name == "DPM++ 2M Karras"
    assert get_sampler("euler_a", "Automatic").name == "Euler a"
    with pytest.raises(InvalidRequest, match="schedule type"):
        get_sampler("Euler", "Cosine")


def test_unknown_model_lists_catalog():
    with pytest.raises(ModelNotAvailable, match="sd-v1-4") as err:
        resolve("stable-diffusion-9")
    assert err.value.field == "model"


def test_missing_path_model():
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve("./no/such/model.safetensors")


def test_aliases_resolve():
    assert resolve("sd14").name == "sd-v1-4"
    assert resolve("SDXL").name == "sdxl-base-1.0"
    assert resolve("stabilityai/stable-diffusion-2-1").name == "sd-v2-1"
    assert resolve(None).name == "sdplay-emoji"


def test_missing_device_lists_available():
    with pytest.raises(DeviceNotAvailable, match="Available: cpu"):
        resolve_device("cuda:3")
    assert resolve_device("auto").id == resolve_device(None).id


def test_dtype_policy():
    cpu = resolve_device("cpu")
    assert resolve_dtype("auto", cpu) == "float32"
    assert resolve_dtype("bf16", cpu) == "bfloat16"
    with pytest.raises(InvalidRequest, match="fp16 is not supported"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(InvalidRequest, match="Unknown dtype"):
        resolve_dtype("int3", cpu)


@pytest.mark.parametrize("text", ["512", "512x", "x512", "axb", "512x512x3", "-8x8"])
def test_bad_size_text(text):
    if text == "512":
        assert parse_size(text) == (512, 512)
        return
    with pytest.raises(InvalidRequest, match="WIDTHxHEIGHT"):
        parse_size(text)
