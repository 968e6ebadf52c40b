"""Run control: Ctrl-C as a request to stop, the learning-rate schedule, fitting a schedule to a deadline."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time

import torch


@contextlib.contextmanager
def stop_on_sigint():
    """Turn the first Ctrl-C into a request to stop after the current step (the second stops at once)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


def schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def fit_to_deadline(run, first: int, began: list[float], share: float) -> None:
    """Once, 60 steps in: shorten the schedule so this stage ends within `share` of the time left.

    The rate is measured over steps 10-60 of the stage, after warm-up (allocation, kernel selection).
    """
    if run.deadline is None or run.step not in (first + 10, first + 60):
        return
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    if run.step == first + 10:
        began[0] = time.monotonic()
        return
    rate = 50 / max(1e-6, time.monotonic() - began[0])
    budget = share * (run.deadline - time.monotonic())
    run.total = max(run.step + 1, min(run.total, run.step + int(rate * budget)))
