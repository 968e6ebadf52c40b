"""Feature reuse across steps: the schedule, exactness where nothing is reused, graphs keyed by phase."""

import numpy as np
import pytest
import torch

from sdplay.accel import deepcache
from sdplay.accel.fastgraphs import eager_recorder
from sdplay.accel.fastpath import FastConfig, accelerate
from sdplay.errors import InvalidRequest
from sdplay.types import GenerationRequest


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "width": 64, "height": 64, "steps": 7, "seed": 7}
    return GenerationRequest(**(base | kw))


def fast_engine(model, options):
    from sdplay.engine import Engine

    engine = Engine(fast=False)
    loaded, _ = engine.load(str(model))
    accelerate(loaded.pipe, loaded.device, FastConfig.parse(options), recorder=eager_recorder, family=loaded.family)
    return engine, loaded.pipe


def pixels(result):
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_interval_one_reuses_nothing_and_changes_nothing(engine, tiny_models, family):
    eager = engine.generate(req(tiny_models[family]))
    fast, pipe = fast_engine(tiny_models[family], "compile=none,graphs=false,deepcache=1")
    assert np.array_equal(pixels(eager), pixels(fast.generate(req(tiny_models[family]))))
    assert pipe.sdplay_fast.stats()["deepcache"] == {"interval": 1, "full_steps": 7, "cached_steps": 0}


def test_reuse_follows_the_schedule_restarts_per_image_and_stays_close(engine, tiny_models):
    model = tiny_models["sd2"]
    eager = engine.generate(req(model))
    fast, pipe = fast_engine(model, "compile=none,graphs=false,deepcache=3")
    first, second = fast.generate(req(model)), fast.generate(req(model))
    stats = pipe.sdplay_fast.stats()["deepcache"]
    assert (stats["full_steps"], stats["cached_steps"]) == (2 * 3, 2 * 4)  # steps 0, 3, 6 of 7 are full
    assert np.array_equal(pixels(first), pixels(second))  # no features leak from one image into the next
    assert not np.array_equal(pixels(first), pixels(eager))  # features really were reused
    assert np.abs(pixels(first) - pixels(eager)).mean() < 40


def test_graphs_of_full_and_cached_steps_agree_with_no_graphs(tiny_models):
    model = tiny_models["sdxl"]
    plain, _ = fast_engine(model, "compile=none,graphs=false,deepcache=2")
    graphed, pipe = fast_engine(model, "compile=none,deepcache=2")
    a, b = plain.generate(req(model)), graphed.generate(req(model))
    assert np.abs(pixels(a) - pixels(b)).max() <= 1
    unet = pipe.sdplay_fast.stats()["unet"]
    assert unet["captures"] == 2 and not unet["failures"]  # one graph per phase


def test_a_new_size_starts_with_a_full_step(tiny_models):
    fast, pipe = fast_engine(tiny_models["sd1"], "compile=none,graphs=false,deepcache=2")
    fast.generate(req(tiny_models["sd1"]))
    res = fast.generate(req(tiny_models["sd1"], width=96))
    assert res.images[0].size == (96, 64)
    cache = pipe.unet.sdplay_deepcache
    assert {key[1:] for key in cache.buffers} == {((2, 4, 8, 8), torch.float32), ((2, 4, 8, 12), torch.float32)}


def test_interval_must_be_positive():
    with pytest.raises(InvalidRequest, match="step interval"):
        deepcache.install(torch.nn.Module(), 0)
