"""Bounded work: how much one request may ask of a device, sized from the device's measured speed.

Work is counted in pixel-steps: width x height x steps x images. Each device has
- `max_pixels` per image (a CPU default of 1024x1024: attention grows with the square of the pixels, and one
  step at 1024x1792 on a laptop CPU already takes minutes),
- `max_seconds` per request (the time limit a running job is stopped at, inside a step),
- `max_work`, the pixel-steps that fit in `max_seconds` at the device's speed: measured from the jobs it ran
  (per model), or a conservative prior for the device kind before the first one.
Every value can be overridden (`--max-pixels`, `--max-request-s`, `--max-work`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sdplay.errors import InvalidRequest
from sdplay.types import MAX_PIXELS, GenerationRequest


@dataclass(frozen=True)
class DeviceDefaults:
    max_seconds: float
    max_pixels: int
    rate: float  # pixel-steps per second assumed before any job was measured


# Priors on the slow end of each kind, for a model the device has not run yet: SD 1.4 at 512x512 does ~4 steps/s
# on an H100-class GPU with CFG (1M pixel-steps/s) and ~0.2 step/s on a desktop CPU (50k pixel-steps/s), so
# 50 steps at 512x512 fit a CPU's 10 minutes and 30 steps at 1024x1024 do not; measured speeds replace them.
DEFAULTS = {
    "cpu": DeviceDefaults(max_seconds=600.0, max_pixels=1024 * 1024, rate=50_000.0),
    "mps": DeviceDefaults(max_seconds=600.0, max_pixels=MAX_PIXELS, rate=150_000.0),
    "xpu": DeviceDefaults(max_seconds=600.0, max_pixels=MAX_PIXELS, rate=300_000.0),
    "cuda": DeviceDefaults(max_seconds=600.0, max_pixels=MAX_PIXELS, rate=1_000_000.0),
}


@dataclass(frozen=True)
class WorkLimits:
    """What one request may ask of a device."""

    device: str
    max_pixels: int
    max_work: int
    max_seconds: float
    measured: bool = False  # max_work comes from this device's measured speed

    def tighter(self, other: WorkLimits) -> WorkLimits:
        """The limits that hold on both devices (a queued job may run on either)."""
        return WorkLimits(
            f"{self.device},{other.device}", min(self.max_pixels, other.max_pixels),
            min(self.max_work, other.max_work), min(self.max_seconds, other.max_seconds),
            self.measured and other.measured,
        )  # fmt: skip


def work_of(request: GenerationRequest) -> int:
    """Pixel-steps of a request whose size and steps are filled in."""
    return (request.width or 0) * (request.height or 0) * (request.steps or 0) * request.n_images


def limits_for(
    device: str,
    kind: str,
    rate: float | None = None,
    *,
    max_seconds: float = 0.0,
    max_work: int = 0,
    max_pixels: int = 0,
) -> WorkLimits:
    """The limits of one device: overrides where given (non-zero), else the kind's defaults and `rate`."""
    base = DEFAULTS.get(kind, DEFAULTS["cpu"])
    seconds = max_seconds or base.max_seconds
    speed = rate if rate else base.rate
    work = max_work or int(speed * seconds)
    return WorkLimits(device, max_pixels or base.max_pixels, work, seconds, measured=bool(rate) and not max_work)


def check_work(request: GenerationRequest, limits: WorkLimits) -> GenerationRequest:
    """Refuse (InvalidRequest, naming the field and what would fit) a request over the device's limits."""
    width, height, steps, n = request.width or 0, request.height or 0, request.steps or 1, request.n_images
    pixels = width * height
    if pixels > limits.max_pixels:
        raise InvalidRequest(
            f"{width}x{height} is {pixels:,} pixels; device {limits.device} takes at most "
            f"{limits.max_pixels:,} per image.",
            field="width",
            hint=f"Choose a smaller size (at most {_side(limits.max_pixels)}x{_side(limits.max_pixels)}).",
        )
    work = work_of(request)
    if work > limits.max_work:
        speed = "at its measured speed" if limits.measured else "at the speed assumed for it"
        fit_steps = limits.max_work // max(1, pixels * n)
        fit_images = limits.max_work // max(1, pixels * steps)
        ways = [f"at most {fit_steps} steps" if fit_steps >= 1 else "a smaller size"]
        if n > 1 and fit_images >= 1:
            ways.append(f"at most {fit_images} image(s)")
        raise InvalidRequest(
            f"{n} image(s) of {width}x{height} with {steps} steps is {work:,} pixel-steps, more than "
            f"device {limits.device} does in its time limit of {limits.max_seconds:g} s {speed} ({limits.max_work:,}).",
            field="steps",
            hint=f"Ask for {' or '.join(ways)}; the server's --max-work and --max-request-s change the limit.",
        )
    return request


def _side(pixels: int) -> int:
    return int(pixels**0.5) // 8 * 8


class SpeedMeter:
    """Measured pixel-steps per second per (device, model): a running average over the jobs that finished."""

    def __init__(self, weight: float = 0.3):
        self.weight = weight
        self._rates: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def record(self, device: str, model: str, work: int, seconds: float) -> None:
        if work <= 0 or seconds <= 0:
            return
        rate = work / seconds
        with self._lock:
            old = self._rates.get((device, model))
            self._rates[(device, model)] = rate if old is None else old + self.weight * (rate - old)

    def rate(self, device: str, model: str) -> float | None:
        with self._lock:
            return self._rates.get((device, model))


def device_kind(device: str) -> str:
    """'cuda:1' -> 'cuda'; 'auto' -> the kind this machine's first device has ('cpu' if none can be found)."""
    name = device.strip().lower()
    if name != "auto":
        return name.partition(":")[0]
    try:
        from sdplay.devices import resolve_device

        return resolve_device("auto").kind
    except Exception:  # no torch, or a broken driver: assume the slowest
        return "cpu"
