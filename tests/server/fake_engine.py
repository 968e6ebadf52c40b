"""A fake engine for server tests: solid-colour images whose colour encodes prompt + seed, real step callbacks,
real cancellation and real sdplay errors. It implements EngineProtocol exactly as the server uses it."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import torch
from PIL import Image

from sdplay.errors import DeviceOutOfMemory, InvalidRequest, ModelNotAvailable
from sdplay.types import (
    MAX_SEED,
    EngineProtocol,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    PhaseTimings,
    StepInfo,
)

MODELS = (
    ModelInfo("sdplay-emoji", "sd1", 64, "DPM++ 2M", 4, 4.0, True, aliases=("emoji", "default"), sizes=((64, 64),)),
    ModelInfo("sd-v1-4", "sd1", 64, "PNDM", 6, 7.5, True, aliases=("sd14",), sizes=((512, 512),)),
    ModelInfo("sdxl-base-1.0", "sdxl", 128, "Euler", 5, 5.0, False, how_to_get="Run `sdplay models fetch sdxl`."),
)
SAMPLERS = ("DPM++ 2M", "DPM++ 2M Karras", "Euler", "Euler a", "PNDM", "DDIM", "DPM++ SDE", "DPM++ SDE Karras")
BATCH_KEYS = ("model", "steps", "guidance", "width", "height", "sampler", "device", "dtype")


def colour(prompt: str, seed: int) -> tuple[int, int, int]:
    """The colour the fake paints for (prompt, seed): tests recompute it to check nothing got crossed."""
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


class FakeEngine(EngineProtocol):
    """Fast, deterministic, thread-checked stand-in for sdplay.engine.Engine."""

    def __init__(self, step_delay: float = 0.002):
        self.step_delay = step_delay
        self.calls: list[int] = []  # requests per engine call (1 = alone)
        self.threads: set[str] = set()  # names of the threads that called generate
        self.loaded: set[str] = set()
        self._busy = threading.Lock()

    def models(self) -> list[ModelInfo]:
        return [m if m.name not in self.loaded else _loaded(m) for m in MODELS]

    def samplers(self) -> list[str]:
        return list(SAMPLERS)

    def load(self, model: str, device: str = "auto") -> None:
        self.loaded.add(self._model(model).name)

    def unload(self, model: str | None = None) -> None:
        self.loaded.clear() if model is None else self.loaded.discard(model)

    def generate(self, request: GenerationRequest, on_step=None) -> GenerationResult:
        return self.generate_batch([request], on_step)[0]

    def generate_batch(self, requests: list[GenerationRequest], on_step=None) -> list[GenerationResult]:
        if not self._busy.acquire(blocking=False):
            raise AssertionError("the engine was called from two threads at once")
        try:
            return self._run([self.resolve(r) for r in requests], on_step)
        finally:
            self._busy.release()

    def _run(self, reqs: list[GenerationRequest], on_step) -> list[GenerationResult]:
        for key in BATCH_KEYS:
            if len({getattr(r, key) for r in reqs}) > 1:
                raise InvalidRequest(f"Requests in one batch must share {key}.")
        self.calls.append(len(reqs))
        self.threads.add(threading.current_thread().name)
        self.loaded.add(reqs[0].model)
        for r in reqs:
            if "[oom]" in r.prompt:
                raise DeviceOutOfMemory("Out of memory (simulated).", hint="Use a smaller size.")
            if "[crash]" in r.prompt:
                raise RuntimeError("simulated engine bug")
        first, start = reqs[0], time.perf_counter()
        seeds = [[(r.seed + k) % (MAX_SEED + 1) for k in range(r.n_images)] for r in reqs]
        flat = [s for group in seeds for s in group]
        family = next(m.family for m in MODELS if m.name == first.model)
        for step in range(1, first.steps + 1):
            time.sleep(self.step_delay)
            if on_step is not None:
                latents = torch.stack([_latent(s, first, step) for s in flat])  # (N, 4, h/8, w/8)
                on_step(StepInfo(step, first.steps, 0, 1, time.perf_counter() - start, latents, family))
        total = time.perf_counter() - start
        return [
            GenerationResult(
                images=[Image.new("RGB", (r.width, r.height), colour(r.prompt, s)) for s in group],
                seeds=group,
                request=r,
                timings=PhaseTimings(denoising=total, total=total),
                peak_memory_bytes=None,
                metadata={"model": r.model, "versions": {"sdplay": "test"}, "fake": True},
            )
            for r, group in zip(reqs, seeds, strict=True)
        ]

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        request.validate()
        info = self._model(request.model or "sdplay-emoji")
        sampler = request.sampler or info.default_sampler
        if sampler not in SAMPLERS:
            raise InvalidRequest(f"Unknown sampler {sampler!r}.", field="sampler")
        return request.with_(
            model=info.name, sampler=sampler, steps=request.steps or info.default_steps,
            guidance=info.default_guidance if request.guidance is None else request.guidance,
            width=request.width or info.native_size, height=request.height or info.native_size,
            seed=random.randint(0, MAX_SEED + 1 - request.n_images) if request.seed == -1 else request.seed,
        )  # fmt: skip

    def _model(self, name: str) -> ModelInfo:
        for m in MODELS:
            if name in (m.name, *m.aliases):
                if not m.available:
                    raise ModelNotAvailable(f"{m.name} is not on this machine.", hint=m.how_to_get)
                return m
        raise ModelNotAvailable(f"Unknown model {name!r}.", field="model")


def _latent(seed: int, req: GenerationRequest, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(4, req.height // 8, req.width // 8, generator=g)
    return noise * (1 - step / req.steps)


def _loaded(m: ModelInfo) -> ModelInfo:
    from dataclasses import replace

    return replace(m, loaded=True)
