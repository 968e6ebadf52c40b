"""The engine: resolve a request, load (and cache) the pipeline, generate, and describe what was done."""

from __future__ import annotations

import logging
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from sdplay import catalog
from sdplay.catalog import ModelSpec
from sdplay.devices import DeviceInfo, discover_devices, resolve_device, resolve_dtype
from sdplay.errors import InvalidRequest
from sdplay.inputs import prepare_input, working_size
from sdplay.loading import LoadedModel, LoadOptions, load_pipeline
from sdplay.masking import fill_mode, resize_mode
from sdplay.run import BatchOutput, run_batch
from sdplay.samplers import get_sampler, sampler_names
from sdplay.types import (
    DEFAULT_STRENGTH,
    MAX_SEED,
    EngineProtocol,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    PhaseTimings,
    StepCallback,
)

log = logging.getLogger(__name__)

# Fields that must agree for requests to share one UNet batch.
BATCH_KEYS = ("model", "steps", "guidance", "width", "height", "sampler", "device", "dtype")


@dataclass(frozen=True)
class Item:
    """One image to make: which request it belongs to, its prompts and its seed."""

    owner: int
    prompt: str
    negative: str
    seed: int


class Engine(EngineProtocol):
    """Owns loaded pipelines (LRU cache) and runs generations one at a time per engine."""

    def __init__(
        self,
        options: LoadOptions | None = None,
        *,
        max_models: int = 2,
        memory_budget_bytes: int | None = None,
        monitor: bool = False,
        **overrides: Any,
    ):
        self.options = replace(options or LoadOptions(), **overrides)
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self.monitor = monitor  # record device telemetry during every generation
        self._models: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._devices: list[DeviceInfo] | None = None

    # -- models and devices ---------------------------------------------------------------
    def devices(self) -> list[DeviceInfo]:
        if self._devices is None:
            self._devices = discover_devices()
        return self._devices

    def load(self, model: str | None, device: str = "auto", dtype: str = "auto") -> tuple[LoadedModel, bool]:
        """The cached pipeline for (model, device, dtype), loading it if needed; True if just loaded."""
        spec = catalog.resolve(model, allow_pickle=self.options.allow_pickle)
        dev = resolve_device(device, self.devices())
        key = (spec.name, dev.id, resolve_dtype(dtype, dev))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key], False
            while len(self._models) >= self.max_models:
                self._evict()
            loaded = load_pipeline(spec, dev, key[2], self.options)
            self._models[key] = loaded
            while len(self._models) > 1 and self._over_budget():
                self._evict()
            log.info("loaded %s on %s (%s) in %.1f s", spec.name, dev.id, key[2], loaded.load_seconds)
            return loaded, True

    def _over_budget(self) -> bool:
        budget = self.memory_budget_bytes
        return budget is not None and sum(model_bytes(m.pipe) for m in self._models.values()) > budget

    def _evict(self) -> None:
        from sdplay.devices import empty_cache

        key, old = self._models.popitem(last=False)
        log.info("unloading %s from %s", key[0], key[1])
        del old
        empty_cache(resolve_device(key[1], self.devices()))

    def unload(self, model: str | None = None) -> None:
        with self._lock:
            name = catalog.resolve(model).name if model else None
            for key in [k for k in self._models if name is None or k[0] == name]:
                self._models.move_to_end(key, last=False)
                self._evict()

    def loaded_models(self) -> list[str]:
        return [k[0] for k in self._models]

    def models(self) -> list[ModelInfo]:
        loaded = set(self.loaded_models())
        return [_model_info(spec, spec.name in loaded) for spec in catalog.BUILTIN]

    def samplers(self) -> list[str]:
        return sampler_names()

    # -- generation -----------------------------------------------------------------------
    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None, monitor: bool | None = None
    ) -> GenerationResult:
        return self.generate_batch([request], on_step, monitor)[0]

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: StepCallback | None = None, monitor: bool | None = None
    ) -> list[GenerationResult]:
        """Generate several compatible requests as shared UNet batches; each keeps its prompts and seeds."""
        resolved = [self.resolve(r) for r in requests]
        _check_compatible(resolved)
        with self._lock:
            if not (self.monitor if monitor is None else monitor):
                return self._generate(resolved, on_step)
            from sdplay.telemetry import record

            with record(resolved[0].device, interval=0.1) as trace:
                results = self._generate(resolved, on_step)
            for result in results:
                result.telemetry = trace.summary()
            return results

    def _generate(self, resolved: list[GenerationRequest], on_step: StepCallback | None) -> list[GenerationResult]:
        first = resolved[0]
        loaded, fresh = self.load(first.model, first.device, first.dtype)
        items = [
            Item(i, r.prompt, r.negative_prompt, (r.seed + k) % (MAX_SEED + 1))
            for i, r in enumerate(resolved)
            for k in range(r.n_images)
        ]
        size = (first.batch_size or first.n_images) if len(resolved) == 1 else len(items)
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        prepared = [prepare_input(r) for r in resolved] if first.init_image is not None else None
        outputs = [
            run_batch(loaded, first, b, on_step, n, len(batches), [prepared[i.owner] for i in b] if prepared else None)
            for n, b in enumerate(batches)
        ]
        return _split_results(resolved, items, outputs, loaded, fresh)

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Validate, then fill every default from the model's spec and draw a seed if asked."""
        request.validate()
        spec = catalog.resolve(request.model, allow_pickle=self.options.allow_pickle)
        dev = resolve_device(request.device, self.devices())
        sampler = get_sampler(request.sampler or spec.default_sampler).name
        width, height = working_size(request, spec.native_size)
        return request.with_(
            model=spec.name,
            steps=request.steps or spec.default_steps,
            guidance=spec.default_guidance if request.guidance is None else request.guidance,
            width=width,
            height=height,
            strength=_strength(request),
            inpaint_fill=fill_mode(request.inpaint_fill),
            resize_mode=resize_mode(request.resize_mode),
            sampler=sampler,
            seed=random.randint(0, MAX_SEED) if request.seed == -1 else request.seed,
            device=dev.id,
            dtype=resolve_dtype(request.dtype, dev),
        )


def _strength(request: GenerationRequest) -> float | None:
    if request.init_image is None:
        return None
    return DEFAULT_STRENGTH if request.strength is None else request.strength


def _check_compatible(requests: list[GenerationRequest]) -> None:
    for key in BATCH_KEYS:
        values = {getattr(r, key) for r in requests}
        if len(values) > 1:
            raise InvalidRequest(f"Requests in one batch must share {key}; got {sorted(map(str, values))}.")
    if len({r.batch_fields() for r in requests}) > 1:
        raise InvalidRequest("Requests in one batch must share the task, denoising strength, fill and hires fix.")


def _split_results(
    requests: list[GenerationRequest], items: list[Item], outputs: list[BatchOutput], loaded: LoadedModel, fresh: bool
) -> list[GenerationResult]:
    """Hand each request its own images, seeds and verdicts; phase times are shared by the batch."""
    images = [img for out in outputs for img in out.images]
    nsfw = [flag for out in outputs for flag in out.nsfw] if all(o.nsfw is not None for o in outputs) else None
    timings = PhaseTimings(
        load=loaded.load_seconds if fresh else 0.0,
        text_encoding=sum(o.text_encoding for o in outputs),
        denoising=sum(o.denoising for o in outputs),
        decoding=sum(o.decoding for o in outputs),
        safety_check=sum(o.safety_check for o in outputs),
    )
    timings = replace(timings, total=sum(vars(timings).values()))
    peak = max((o.peak_memory for o in outputs if o.peak_memory is not None), default=None)
    results = []
    for i, req in enumerate(requests):
        mine = [k for k, item in enumerate(items) if item.owner == i]
        metadata = _metadata(req, loaded, timings, peak, outputs)
        results.append(
            GenerationResult(
                images=[images[k] for k in mine],
                seeds=[items[k].seed for k in mine],
                request=req,
                timings=timings,
                peak_memory_bytes=peak,
                nsfw=[nsfw[k] for k in mine] if nsfw is not None else None,
                metadata=metadata,
            )
        )
    return results


def _metadata(req: GenerationRequest, loaded: LoadedModel, timings: PhaseTimings, peak, outputs) -> dict[str, Any]:
    spec = loaded.spec
    return {
        "model": spec.name,
        "model_hub_id": spec.repo_id,
        "family": loaded.family.value,
        "sampler": req.sampler,
        "scheduler": outputs[0].scheduler,
        "text_chunks": max(o.chunks for o in outputs),
        "device": loaded.device.to_dict(),
        "dtype": loaded.dtype,
        "optimisation": loaded.choices,
        "random_weights": bool(loaded.choices.get("random_weights")),
        "timings": vars(timings),
        "peak_memory_bytes": peak,
        "warnings": sorted({w for o in outputs for w in o.warnings}),
        "versions": versions(),
    }


def model_bytes(pipe: Any) -> int:
    """Bytes held by the parameters and buffers of a pipeline's modules."""
    import torch

    total = 0
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return total


_VERSIONS: dict[str, str] = {}


def versions() -> dict[str, str]:
    """Versions of sdplay and the libraries that shape its output."""
    if not _VERSIONS:
        import diffusers
        import torch
        import transformers

        from sdplay import __version__

        _VERSIONS.update(
            sdplay=__version__, torch=torch.__version__, diffusers=diffusers.__version__,
            transformers=transformers.__version__,
        )  # fmt: skip
    return dict(_VERSIONS)


def _model_info(spec: ModelSpec, loaded: bool) -> ModelInfo:
    from sdplay.availability import how_to_get, is_available

    return ModelInfo(
        name=spec.name,
        family=spec.family.value,
        native_size=spec.native_size,
        default_sampler=spec.default_sampler,
        default_steps=spec.default_steps,
        default_guidance=spec.default_guidance,
        available=is_available(spec),
        loaded=loaded,
        aliases=spec.aliases,
        description=spec.description,
        sizes=spec.sizes,
        how_to_get=how_to_get(spec),
    )
