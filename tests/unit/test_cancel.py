"""Cancellation inside a step: the check runs before every UNet block, so a stop takes a fraction of a step."""

from __future__ import annotations

import threading
import time

import pytest

from sdplay import cancel
from sdplay.errors import Cancelled
from sdplay.types import GenerationRequest

BLOCK_DELAY = 0.15  # seconds added to every UNet block, so that one step is long enough to measure


def test_a_cancel_takes_effect_within_a_fraction_of_a_step(engine, tiny_models):
    """The stop arrives while the second UNet block of step 4 runs; it must take effect at the next block."""
    loaded, _ = engine.load(str(tiny_models["sd1"]), "cpu")
    unet = set(loaded.pipe.unet.modules())
    blocks = [b for b in cancel.blocks_of(loaded.pipe) if b in unet]
    stop = threading.Event()
    step_ends: list[float] = []
    state = {"in_step": 0}

    def slow_block(*_) -> None:  # runs after the block's check (the guard is installed first)
        state["in_step"] += 1
        if len(step_ends) == 3 and state["in_step"] == 2 and not stop.is_set():
            state["requested_at"] = time.perf_counter()
            stop.set()  # what a cancel from another thread does: set a flag the check reads
        time.sleep(BLOCK_DELAY)  # the block runs on: the stop takes effect at the next block's check

    def on_step(_info) -> None:
        step_ends.append(time.perf_counter())
        state["in_step"] = 0

    def check() -> None:
        if stop.is_set():
            state["raised_at"] = time.perf_counter()
            raise Cancelled("stopped by the test")

    cancel.guard(loaded.pipe)
    slow = [b.register_forward_pre_hook(slow_block) for b in blocks]
    request = GenerationRequest("a red heart", model=str(tiny_models["sd1"]), width=64, height=64, steps=8, seed=1,
                                device="cpu")  # fmt: skip
    try:
        with cancel.checking(check), pytest.raises(Cancelled):
            engine.generate(request, on_step=on_step)
    finally:
        for handle in slow:
            handle.remove()
    step = step_ends[2] - step_ends[1]
    latency = state["raised_at"] - state["requested_at"]
    assert len(blocks) >= 3 and step >= len(blocks) * BLOCK_DELAY
    assert len(step_ends) == 3, "the step in progress ran to its end"
    assert BLOCK_DELAY <= latency < step / 2, f"cancel took {latency:.3f} s of a {step:.3f} s step"
    print(f"cancel latency {latency * 1000:.0f} ms in a {step * 1000:.0f} ms step of {len(blocks)} blocks")
    again = GenerationRequest("again", model=str(tiny_models["sd1"]), width=64, height=64, steps=2, device="cpu")
    assert engine.generate(again).images, "the engine works after a cancel"


def test_the_guard_is_idempotent_and_silent_without_a_check(engine, tiny_models):
    loaded, _ = engine.load(str(tiny_models["sd1"]), "cpu")
    count = cancel.guard(loaded.pipe)
    assert count == len(cancel.blocks_of(loaded.pipe)) >= 5  # UNet down/mid/up and VAE decoder mid/up
    assert cancel.guard(loaded.pipe) == count
    cancel.check_now()  # no check installed: nothing happens
    with cancel.checking(lambda: (_ for _ in ()).throw(Cancelled("now"))), pytest.raises(Cancelled):
        cancel.check_now()
    cancel.check_now()  # the check ends with its context
