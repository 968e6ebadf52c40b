"""The checkpoints folder: diffusers folders and single files listed by name beside the built-in models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from singlefile import copy_configs, write_single_file

from sdplay.engine import Engine
from sdplay.errors import ModelNotAvailable
from sdplay.plan import Limits
from sdplay.types import GenerationRequest

SERVER = Limits(catalog_only=True)  # a server's plans: listed models only


def req(model, **kw):
    base = {"prompt": "a red heart", "model": model, "width": 64, "height": 64, "steps": 2, "seed": 1,
            "sampler": "Euler", "guidance": 7.5}  # fmt: skip
    return GenerationRequest(**(base | kw))


def test_folder_models_are_listed_by_name_and_run_like_their_paths(tiny_models, tmp_path):
    root = tmp_path / "Stable-diffusion"
    shutil.copytree(tiny_models["sd1"], root / "tiny-folder")
    write_single_file(tiny_models["sd2"], "sd2", root / "styles" / "tiny-single.safetensors")
    copy_configs(tiny_models["sd2"], root / "styles" / "tiny-single")  # its configs beside it: not a model itself
    (root / "notes.safetensors").write_bytes(b"not a checkpoint")
    eng = Engine(ckpt_dir=str(root))
    names = [m.name for m in eng.models()]
    assert names[:4] == ["sdplay-emoji", "sd-v1-4", "sd-v2-1", "sdxl-base-1.0"]
    assert sorted(names[4:]) == ["tiny-folder", "tiny-single"]  # the broken file is left out (and logged)
    info = {m.name: m for m in eng.models()}
    assert info["tiny-single"].family == "sd2" and info["tiny-single"].available
    by_name = eng.generate(eng.plan(req("tiny-folder"), SERVER))
    by_path = eng.generate(req(str(tiny_models["sd1"])))
    assert np.array_equal(np.asarray(by_name.images[0]), np.asarray(by_path.images[0]))
    assert by_name.metadata["model"] == "tiny-folder"
    assert eng.plan(req("tiny-single.safetensors"), SERVER).model.name == "tiny-single"
    with pytest.raises(ModelNotAvailable, match="tiny-folder"):
        eng.plan(req("tiny-fodler"), SERVER)
    shutil.copytree(tiny_models["sd1"], root / "added-later")
    assert "added-later" in [m.name for m in eng.models()]  # seen without a restart
