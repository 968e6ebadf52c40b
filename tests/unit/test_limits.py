"""Per-device work limits: pixels per image, pixel-steps per request sized from the measured speed, time limit."""

from __future__ import annotations

import pytest

from sdplay.errors import InvalidRequest
from sdplay.limits import DEFAULTS, SpeedMeter, check_work, device_kind, limits_for, work_of
from sdplay.types import GenerationRequest


def req(width=512, height=512, steps=30, n=1) -> GenerationRequest:
    return GenerationRequest("x", width=width, height=height, steps=steps, n_images=n)


def test_cpu_defaults_keep_one_request_to_minutes():
    cpu = limits_for("cpu", "cpu")
    assert cpu.max_seconds == 600 and cpu.max_pixels == 1024 * 1024 and not cpu.measured
    check_work(req(512, 512, 50), cpu)  # SD 1.4's defaults fit
    with pytest.raises(InvalidRequest, match="1,835,008 pixels") as big:
        check_work(req(1024, 1792, 1), cpu)  # the request that ran for over 12 minutes
    assert big.value.field == "width" and "1024x1024" in big.value.hint
    with pytest.raises(InvalidRequest, match="pixel-steps") as long:
        check_work(req(1024, 1024, 30), cpu)
    assert long.value.field == "steps" and "at most 28 steps" in long.value.hint
    assert work_of(req(64, 64, 20, 4)) == 64 * 64 * 20 * 4


def test_the_measured_speed_sizes_the_limit():
    meter = SpeedMeter()
    assert meter.rate("cpu", "m") is None
    meter.record("cpu", "m", work=1_000_000, seconds=1.0)
    meter.record("cpu", "m", work=3_000_000, seconds=1.0)
    rate = meter.rate("cpu", "m")
    assert 1_000_000 < rate < 3_000_000  # a running average
    fast = limits_for("cpu", "cpu", rate)
    assert fast.measured and fast.max_work == int(rate * 600)
    check_work(req(512, 512, 150, 8), fast)  # the measured speed allows what the prior refused
    with pytest.raises(InvalidRequest, match="measured speed"):
        check_work(req(512, 512, 150, 8), limits_for("cpu", "cpu", 10_000.0))


def test_overrides_and_the_tighter_of_two_devices():
    own = limits_for("cuda:0", "cuda", max_seconds=5, max_work=100, max_pixels=64 * 64)
    assert (own.max_seconds, own.max_work, own.max_pixels, own.measured) == (5, 100, 4096, False)
    both = limits_for("cuda:0", "cuda").tighter(limits_for("cpu", "cpu"))
    assert both.max_pixels == DEFAULTS["cpu"].max_pixels and both.max_seconds == 600
    assert both.max_work == min(int(DEFAULTS["cuda"].rate * 600), int(DEFAULTS["cpu"].rate * 600))
    assert device_kind("cuda:1") == "cuda" and device_kind("cpu") == "cpu" and device_kind("auto") in DEFAULTS


def test_seeds_never_wrap():
    GenerationRequest("x", seed=2**32 - 2, n_images=2).validate()
    with pytest.raises(InvalidRequest, match="largest seed") as wrap:
        GenerationRequest("x", seed=2**32 - 1, n_images=2).validate()
    assert wrap.value.field == "seed"
