"""A fake engine for server tests: solid-colour images whose colour encodes prompt + seed, real step callbacks,
real cancellation and real sdplay errors. It implements EngineProtocol exactly as the server uses it."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace

import torch
from PIL import Image

from sdplay import catalog
from sdplay.catalog import ModelSpec
from sdplay.devices import DeviceInfo
from sdplay.errors import DeviceOutOfMemory, ModelNotAvailable
from sdplay.loading import LoadOptions
from sdplay.plan import Limits, Plan, check_compatible, plan
from sdplay.samplers import sampler_names
from sdplay.types import Catalog, GenerationRequest, GenerationResult, ModelInfo, PhaseTimings, StepInfo

MODELS = (
    ModelInfo("sdplay-emoji", "sd1", 64, "DPM++ 2M", 4, 4.0, True, aliases=("emoji", "default"), sizes=((64, 64),)),
    ModelInfo("sd-v1-4", "sd1", 64, "PNDM", 6, 7.5, True, aliases=("sd14",), sizes=((512, 512),)),
    ModelInfo("sdxl-base-1.0", "sdxl", 128, "Euler", 5, 5.0, False, how_to_get="Run `sdplay models fetch sdxl`."),
)


def _spec(info: ModelInfo) -> ModelSpec:
    """The catalog's spec of a fake model, with the fake's (smaller, faster) defaults."""
    base = catalog.builtin(info.name)
    assert base is not None
    return replace(base, native_size=info.native_size, default_sampler=info.default_sampler,
                   default_steps=info.default_steps, default_guidance=info.default_guidance)  # fmt: skip


def colour(prompt: str, seed: int) -> tuple[int, int, int]:
    """The colour the fake paints for (prompt, seed): tests recompute it to check nothing got crossed."""
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


class FakeEngine:
    """Fast, deterministic, thread-checked stand-in for sdplay.engine.Engine, implementing EngineProtocol.

    It plans with sdplay.plan like the real engine (over its own small catalog) and records the time span of
    every engine call in `intervals`, so tests can see engines of two devices working at once.
    """

    def __init__(self, step_delay: float = 0.002, device: str = "cpu"):
        self.step_delay = step_delay
        self.device = device
        self.options = LoadOptions()
        self.calls: list[int] = []  # requests per engine call (1 = alone)
        self.threads: set[str] = set()  # names of the threads that called generate
        self.intervals: list[tuple[float, float]] = []  # (start, end) perf_counter of every engine call
        self.loaded: set[str] = set()
        self._busy = threading.Lock()
        kind, _, index = device.partition(":")
        self._device = DeviceInfo(device, kind, int(index or 0), f"fake {device}")

    def catalog(self) -> Catalog:
        models = tuple(replace(m, loaded=m.name in self.loaded, usable=m.available) for m in MODELS)
        return Catalog(models, tuple(sampler_names()))

    def plan(self, request: GenerationRequest, limits: Limits | None = None) -> Plan:
        return plan(request, models=self._spec, device=self._device, limits=limits)

    def load(self, model: str | None) -> None:
        self.loaded.add(self._spec(model).name)

    def unload(self, model: str | None = None) -> None:
        self.loaded.clear() if model is None else self.loaded.discard(model)

    def loras(self) -> list:
        return []  # no LoRA folder: plans naming a LoRA are refused, as by an engine without one

    def refresh_loras(self) -> None:
        pass

    def embeddings(self, model: str | None = None) -> dict:
        return {"loaded": {}, "skipped": {}}  # no embeddings folder

    def embedding_names(self) -> list[str]:
        return []

    def find_embedding(self, name: str) -> object:
        from sdplay.errors import InvalidRequest

        raise InvalidRequest(
            f"There is no embedding {name!r} here.", field="prompt", hint="This engine has no embeddings folder."
        )

    def vae_files(self) -> list:
        return []

    def find_vae(self, name: str | None, catalog_only: bool = False) -> object | None:
        from sdplay import vaes
        from sdplay.errors import InvalidRequest

        if vaes.is_none(name) or vaes.is_default(name):
            return None
        raise InvalidRequest(f"There is no VAE {name!r} here.", field="sd_vae", hint="This engine has no VAE folder.")

    def refresh_folder(self, kind: str) -> None:
        pass

    def generate(self, plan: Plan, on_step=None) -> GenerationResult:
        return self.generate_batch([plan], on_step)[0]

    def generate_batch(self, plans: list[Plan], on_step=None) -> list[GenerationResult]:
        if not self._busy.acquire(blocking=False):
            raise AssertionError("the engine was called from two threads at once")
        start = time.perf_counter()
        try:
            check_compatible(plans)
            return self._run(plans, on_step)
        finally:
            self.intervals.append((start, time.perf_counter()))
            self._busy.release()

    def _run(self, plans: list[Plan], on_step) -> list[GenerationResult]:
        reqs = [p.request for p in plans]
        self.calls.append(len(reqs))
        self.threads.add(threading.current_thread().name)
        self.loaded.add(reqs[0].model)
        for r in reqs:
            if "[oom]" in r.prompt:
                raise DeviceOutOfMemory("Out of memory (simulated).", hint="Use a smaller size.")
            if "[crash]" in r.prompt:
                raise RuntimeError("simulated engine bug")
        first, start = reqs[0], time.perf_counter()
        seeds = [p.seeds for p in plans]
        flat = [s for group in seeds for s in group]
        family = plans[0].family.family.value
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
                metadata={"model": r.model, "versions": {"sdplay": "test"}, "fake": True, "device": self.device},
            )
            for r, group in zip(reqs, seeds, strict=True)
        ]

    def _spec(self, name: str | None) -> ModelSpec:
        key = (name or "sdplay-emoji").strip().lower()
        for m in MODELS:
            if key in (m.name, *m.aliases):
                return _spec(m)
        names = ", ".join(m.name for m in MODELS)
        raise ModelNotAvailable(f"Unknown model {name!r}.", field="model", hint=f"Choose one of: {names}.")


def _latent(seed: int, req: GenerationRequest, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(4, req.height // 8, req.width // 8, generator=g)
    return noise * (1 - step / req.steps)
