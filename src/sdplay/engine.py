"""The engine of one device: load (and cache) pipelines, run plans, and describe what was done."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from sdplay import catalog
from sdplay.catalog import ModelSpec
from sdplay.devices import DeviceInfo, discover_devices, resolve_device
from sdplay.errors import InvalidRequest, ModelNotAvailable
from sdplay.inputs import prepare_input
from sdplay.loading import LoadedModel, LoadOptions, load_pipeline
from sdplay.loras import AddonFile, Folder
from sdplay.loras import applied as lora_applied
from sdplay.loras import infotext as lora_infotext
from sdplay.plan import Limits, Plan, check_compatible, plan
from sdplay.run import BatchOutput, run_batch
from sdplay.samplers import sampler_names
from sdplay.types import Catalog, GenerationRequest, GenerationResult, ModelInfo, PhaseTimings, StepCallback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One image to make: which request it belongs to, its prompts and its seed."""

    owner: int
    prompt: str
    negative: str
    seed: int


class Engine:
    """One device's engine: its loaded pipelines (LRU cache, memory budget), its lock, and the plans it runs.

    `device` pins the engine to one device ("cuda:1"; "auto": the best one here); None (the library's default)
    lets each request choose its own device. A server makes one engine per device, so devices run in parallel.
    """

    def __init__(
        self,
        options: LoadOptions | None = None,
        *,
        device: str | None = None,
        max_models: int = 2,
        memory_budget_bytes: int | None = None,
        monitor: bool = False,
        **overrides: Any,
    ):
        self.options = replace(options or LoadOptions(), **overrides)
        self._wanted = device or "auto"
        self._pinned = device is not None
        self.max_models = max_models
        self.memory_budget_bytes = memory_budget_bytes
        self.monitor = monitor  # record device telemetry during every generation
        self._models: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._devices: list[DeviceInfo] | None = None
        self.lora_folder = Folder(self.options.lora_dir, "LoRA")

    # -- planning -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """The id of this engine's device ("cuda:1"); "auto" for an engine that follows each request's device."""
        return resolve_device(self._wanted, self.devices()).id if self._pinned else "auto"

    def devices(self) -> list[DeviceInfo]:
        if self._devices is None:
            self._devices = discover_devices()
        return self._devices

    def plan(self, request: GenerationRequest, limits: Limits | None = None) -> Plan:
        """The one resolution of `request` for this engine (see sdplay.plan)."""
        limits = limits or Limits()
        wanted = self._wanted if self._pinned else request.device
        device = resolve_device(wanted, self.devices())

        def models(name: str | None) -> ModelSpec:
            return self.model_spec(name, limits.catalog_only)

        return plan(request, models=models, device=device, limits=limits, loras=self.find_lora)

    def find_lora(self, name: str) -> AddonFile:
        """A LoRA file of this engine's LoRA folder, by name."""
        return self.lora_folder.get(name, "loras")

    def loras(self) -> list[AddonFile]:
        """The LoRA files of this engine's folder."""
        return list(self.lora_folder.files().values())

    def model_spec(self, name: str | None, catalog_only: bool = False) -> ModelSpec:
        """The spec of a model name (catalog_only: listed models only, no paths or hub ids)."""
        if not catalog_only:
            return catalog.resolve(name, allow_pickle=self.options.allow_pickle)
        spec = catalog.builtin(name or catalog.DEFAULT_MODEL)
        if spec is None:
            raise ModelNotAvailable(
                f"Unknown model {name!r}.", field="model", hint=f"Choose one of: {', '.join(catalog.catalog_names())}."
            )
        return spec

    # -- models ---------------------------------------------------------------------------
    def load(self, model: str | None, device: str = "auto", dtype: str = "auto") -> tuple[LoadedModel, bool]:
        """The cached pipeline for a model on this engine's device, loading it if needed; True if just loaded."""
        return self._load(self.plan(GenerationRequest(prompt="", model=model, device=device, dtype=dtype)))

    def runs_light(self, p: Plan) -> bool:
        """Whether this engine runs the plan on sdplay.light (its options ask for it and it covers the plan)."""
        if not self.options.light:
            return False
        from sdplay import light

        return light.covers(p, self.options)

    def _load(self, p: Plan) -> tuple[LoadedModel, bool]:
        key = (p.model.name, p.device.id, p.dtype)
        light = self.runs_light(p)
        with self._lock:
            cached = self._models.get(key)
            if cached is not None and (light or not cached.light):  # a light pipeline serves only light plans
                self._models.move_to_end(key)
                return cached, False
            if cached is not None:
                self._models.move_to_end(key, last=False)
                self._evict()
            while len(self._models) >= self.max_models:
                self._evict()
            loaded = load_pipeline(p.model, p.device, p.dtype, self.options, light)
            self._models[key] = loaded
            while len(self._models) > 1 and self._over_budget():
                self._evict()
            log.info("loaded %s on %s (%s) in %.1f s", p.model.name, p.device.id, p.dtype, loaded.load_seconds)
            return loaded, True

    def _refiner(self, first: Plan) -> LoadedModel | None:
        """The SDXL refiner of a plan, loaded on the plan's device like any model (it stays in the cache)."""
        req = first.request
        if not req.refiner:
            return None
        base = self._models.get((first.model.name, first.device.id, first.dtype))
        ask = GenerationRequest(prompt="", model=req.refiner, device=first.device.id, dtype=first.dtype)
        refiner, _ = self._load(self.plan(ask, first.limits))
        if base is not None:
            _check_refiner(base, refiner)
        return refiner

    def _over_budget(self) -> bool:
        budget = self.memory_budget_bytes
        return budget is not None and sum(model_bytes(m.pipe) for m in self._models.values()) > budget

    def _evict(self) -> None:
        from sdplay.devices import empty_cache

        key, old = self._models.popitem(last=False)
        log.info("unloading %s from %s", key[0], key[1])
        device = old.device
        del old
        empty_cache(device)

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
        return [_model_info(spec, spec.name in loaded, self.options.random_weights) for spec in catalog.BUILTIN]

    def samplers(self) -> list[str]:
        return sampler_names()

    def catalog(self) -> Catalog:
        return Catalog(tuple(self.models()), tuple(self.samplers()))

    # -- generation -----------------------------------------------------------------------
    def generate(
        self, plan: Plan | GenerationRequest, on_step: StepCallback | None = None, monitor: bool | None = None
    ) -> GenerationResult:
        """Run one plan (a bare request is planned first: library convenience)."""
        return self.generate_batch([plan], on_step, monitor)[0]

    def generate_batch(
        self,
        plans: list[Plan] | list[GenerationRequest],
        on_step: StepCallback | None = None,
        monitor: bool | None = None,
    ) -> list[GenerationResult]:
        """Generate compatible plans as shared UNet batches; each keeps its prompts and seeds."""
        ready = [p if isinstance(p, Plan) else self.plan(p) for p in plans]
        check_compatible(ready)
        if self._pinned and ready[0].device.id != self.device:
            raise InvalidRequest(f"A plan for {ready[0].device.id} was given to the engine of {self.device}.")
        with self._lock:
            if not (self.monitor if monitor is None else monitor):
                return self._generate(ready, on_step)
            from sdplay.telemetry import record

            with record(ready[0].device.id, interval=0.1) as trace:
                results = self._generate(ready, on_step)
            for result in results:
                result.telemetry = trace.summary()
            return results

    def _generate(self, plans: list[Plan], on_step: StepCallback | None) -> list[GenerationResult]:
        first = plans[0]
        loaded, fresh = self._load(first)
        items = [
            Item(i, p.request.prompt_loras()[0], p.request.negative_prompt, seed)
            for i, p in enumerate(plans)
            for seed in p.seeds
        ]
        req = first.request
        size = (req.batch_size or req.n_images) if len(plans) == 1 else len(items)
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        prepared = [prepare_input(p.request) for p in plans] if req.init_image is not None else None
        refiner = self._refiner(first)
        with lora_applied(loaded.pipe, list(first.loras), first.family.label):
            outputs = [
                run_batch(loaded, first, b, on_step, n, len(batches), [prepared[i.owner] for i in b] if prepared
                          else None, refiner)
                for n, b in enumerate(batches)
            ]  # fmt: skip
        results = _split_results([p.request for p in plans], items, outputs, loaded, fresh)
        for result, p in zip(results, plans, strict=True):
            result.metadata |= _addon_metadata(p)
        return results


def _check_refiner(base: LoadedModel, refiner: LoadedModel) -> None:
    from sdplay.families import Family

    for role, model in (("model", base), ("refiner", refiner)):
        if model.family is not Family.SDXL:
            raise InvalidRequest(f"The {role} {model.spec.name} is not an SDXL model.", field="refiner_checkpoint",
                                 hint="A refiner hands over from an SDXL base to an SDXL refiner.")  # fmt: skip


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


def _addon_metadata(p: Plan) -> dict[str, Any]:
    """LoRAs and clip skip of a plan, for the metadata and A1111's infotext (`Lora hashes`, `Clip skip`)."""
    loras = [{"name": lo.ref.name, "weight": lo.ref.weight, "te_weight": lo.ref.text_weight, "hash": lo.file.hash}
             for lo in p.loras]  # fmt: skip
    return {"loras": loras, "lora_hashes": lora_infotext(list(p.loras)), "clip_skip": p.request.clip_skip or 1}


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
        import torch

        from sdplay import __version__

        _VERSIONS.update(sdplay=__version__, torch=torch.__version__, diffusers=_version("diffusers"),
                         transformers=_version("transformers"))  # fmt: skip
    return dict(_VERSIONS)


def _version(package: str) -> str:
    """A library's version, without importing it where it is not loaded yet (the light runtime uses neither)."""
    import sys

    module = sys.modules.get(package)
    if module is not None:
        return module.__version__
    from importlib.metadata import version

    return version(package)


def _model_info(spec: ModelSpec, loaded: bool, random_weights: bool = False) -> ModelInfo:
    from sdplay.availability import how_to_get, is_available

    available = is_available(spec)
    return ModelInfo(
        name=spec.name,
        family=spec.family.value,
        native_size=spec.native_size,
        default_sampler=spec.default_sampler,
        default_steps=spec.default_steps,
        default_guidance=spec.default_guidance,
        available=available,
        loaded=loaded,
        aliases=spec.aliases,
        description=spec.description,
        sizes=spec.sizes,
        how_to_get=how_to_get(spec),
        usable=available or random_weights,
    )
