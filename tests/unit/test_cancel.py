"""Cancellation inside a step: the check runs before every UNet block, so a stop takes a fraction of a step."""

from __future__ import annotations

import threading
import time

import pytest

from sdplay import cancel
from sdplay.errors import Cancelled
from sdplay.types import GenerationRequest

BLOCK_DELAY = 0.06  # seconds added to every UNet block, so that one step is long enough to measure


def test_a_cancel_takes_effect_within_a_fraction_of_a_step(engine, tiny_models):
    loaded, _ = engine.load(str(tiny_models["sd1"]), "cpu")
    blocks = [b for b in cancel.blocks_of(loaded.pipe) if b in set(loaded.pipe.unet.modules())]
    slow = [b.register_forward_pre_hook(lambda *_: time.sleep(BLOCK_DELAY)) for b in blocks]
    stop = threading.Event()
    step_ends: list[float] = []
    outcome: dict = {}

    def check() -> None:
        if stop.is_set():
            outcome["raised_at"] = time.perf_counter()
            raise Cancelled("stopped by the test")

    def run() -> None:
        request = GenerationRequest("a red heart", model=str(tiny_models["sd1"]), width=64, height=64, steps=8,
                                    seed=1, device="cpu")  # fmt: skip
        with cancel.checking(check):
            try:
                engine.generate(request, on_step=lambda info: step_ends.append(time.perf_counter()))
            except Cancelled:
                outcome["cancelled"] = True

    try:
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 60
        while len(step_ends) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(step_ends) >= 3, "the generation did not reach step 3"
        step = step_ends[2] - step_ends[1]
        time.sleep(step * 0.3)  # well inside step 4
        requested = time.perf_counter()
        stop.set()
        worker.join(30)
    finally:
        for handle in slow:
            handle.remove()
    assert outcome.get("cancelled"), outcome
    latency = outcome["raised_at"] - requested
    assert len(blocks) >= 3 and step >= len(blocks) * BLOCK_DELAY
    assert latency < step / 2, f"cancel took {latency:.3f} s of a {step:.3f} s step"
    assert len(step_ends) == 3, "the step in progress did not finish"  # stopped inside step 4
    assert engine.generate(GenerationRequest("again", model=str(tiny_models["sd1"]), width=64, height=64, steps=2,
                                             device="cpu")).images  # fmt: skip


def test_the_guard_is_idempotent_and_silent_without_a_check(engine, tiny_models):
    loaded, _ = engine.load(str(tiny_models["sd1"]), "cpu")
    count = cancel.guard(loaded.pipe)
    assert count == len(cancel.blocks_of(loaded.pipe)) >= 5  # UNet down/mid/up and VAE decoder mid/up
    assert cancel.guard(loaded.pipe) == count
    cancel.check_now()  # no check installed: nothing happens
    with cancel.checking(lambda: (_ for _ in ()).throw(Cancelled("now"))), pytest.raises(Cancelled):
        cancel.check_now()
    cancel.check_now()  # the check ends with its context
