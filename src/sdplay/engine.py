"""The engine of one device: load (and cache) pipelines, run plans, and describe what was done."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdplay import catalog, vaes
from sdplay import embeddings as ti
from sdplay.catalog import ModelSpec
from sdplay.devices import DeviceInfo, discover_devices, resolve_device
from sdplay.embeddings import EmbeddingLibrary
from sdplay.errors import InvalidRequest, ModelNotAvailable
from sdplay.inputs import prepare_inputs
from sdplay.loading import LoadedModel, LoadOptions, load_pipeline
from sdplay.loras import AddonFile, Folder
from sdplay.loras import applied as lora_applied
from sdplay.loras import infotext as lora_infotext
from sdplay.masking import InpaintInput
from sdplay.modelfolder import CheckpointFolder
from sdplay.plan import Limits, Plan, check_compatible, plan
from sdplay.prompts import Inversions
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
    index: int = 0  # the image's place in its request (which of the request's init images it starts from)


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
        self.lora_folder = Folder(self.options.lora_dir, "LoRA", folder="Lora")
        self.embedding_library = EmbeddingLibrary(self.options.embeddings_dir, allow_pickle=self.options.allow_pickle)
        self.vae_folder = vaes.VaeFolder(self.options.vae_dir)
        self.checkpoint_folder = CheckpointFolder(self.options.ckpt_dir, allow_pickle=self.options.allow_pickle)
        self._vaes: OrderedDict[tuple, Any] = OrderedDict()  # loaded VAEs: (file, model, device, dtype) -> module

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

        def find_vae(name: str | None) -> vaes.VaeFile | None:
            return self.find_vae(name, limits.catalog_only)

        return plan(request, models=models, device=device, limits=limits, loras=self.find_lora,
                    embeddings=self.embedding_library.used, vaes=find_vae)  # fmt: skip

    def find_lora(self, name: str) -> AddonFile:
        """A LoRA file of this engine's LoRA folder, by name."""
        return self.lora_folder.get(name, "loras")

    def loras(self) -> list[AddonFile]:
        """The LoRA files of this engine's folder."""
        return list(self.lora_folder.files().values())

    def refresh_loras(self) -> None:
        """Forget the folder listing: files added or removed since show up at the next look."""
        self.lora_folder.refresh()

    def embeddings(self, model: str | None = None) -> dict[str, dict[str, Any]]:
        """The embeddings folder as A1111 lists it: those that fit `model`'s text encoders are "loaded", the others
        "skipped" (read from the files and the model's configs; the model is not loaded)."""
        return self.embedding_library.listing(self.text_widths(model))

    def text_widths(self, model: str | None) -> tuple[int, ...] | None:
        """The width of each text encoder of a model (SDXL: two), from the loaded model or its configs."""
        spec = self.model_spec(model)
        for (name, _, _), loaded in list(self._models.items()):  # read from HTTP threads too
            if name == spec.name:
                return _encoder_widths(loaded.pipe)
        return _config_widths(spec)

    def find_vae(self, name: str | None, catalog_only: bool = False) -> vaes.VaeFile | None:
        """The VAE a request asks for: None/"Automatic" the engine's default (--vae), "None" the model's own, else a
        name in the VAE folder (or, outside a server, a path)."""
        if vaes.is_none(name):
            return None
        if vaes.is_default(name):
            if not self.options.vae:
                return None
            name, catalog_only = self.options.vae, False  # the operator's choice may be a path
        assert name is not None
        looks_like_path = any(c in name for c in "/\\~") or Path(name).exists()
        if not catalog_only and looks_like_path:  # the library and the CLI may name a file or folder
            return vaes.vae_file(Path(name))
        return self.vae_folder.get(name, "vae")  # type: ignore[return-value]

    def vae_files(self) -> list[vaes.VaeFile]:
        """The VAE files and folders of this engine's VAE folder."""
        return list(self.vae_folder.files().values())  # type: ignore[arg-type]

    def embedding_names(self) -> list[str]:
        """The names of the embeddings folder's files (prompts use them as words)."""
        return sorted(self.embedding_library.files())

    def find_embedding(self, name: str) -> Any:
        """An embedding file by name (InvalidRequest listing the close ones if there is none)."""
        return self.embedding_library.get(name)

    def refresh_folder(self, kind: str) -> None:
        """Forget one add-on folder's listing ("lora", "embeddings", "vae" or "checkpoints")."""
        folders = {"lora": self.lora_folder, "embeddings": self.embedding_library, "vae": self.vae_folder,
                   "checkpoints": self.checkpoint_folder}  # fmt: skip
        folders[kind].refresh()

    def model_spec(self, name: str | None, catalog_only: bool = False) -> ModelSpec:
        """The spec of a model name: built-in, then the checkpoints folder's (catalog_only: only those, no paths or
        hub ids)."""
        spec = catalog.builtin(name or catalog.DEFAULT_MODEL) or self.checkpoint_folder.find(name)
        if spec is not None:
            return spec
        if not catalog_only:
            return catalog.resolve(name, allow_pickle=self.options.allow_pickle)
        names = [*catalog.catalog_names(), *(s.name for s in self.checkpoint_folder.specs())]
        raise ModelNotAvailable(f"Unknown model {name!r}.", field="model", hint=f"Choose one of: {', '.join(names)}.")

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
            name = self.model_spec(model).name if model else None
            for key in [k for k in self._models if name is None or k[0] == name]:
                self._models.move_to_end(key, last=False)
                self._evict()

    def loaded_models(self) -> list[str]:
        return [k[0] for k in self._models]

    def models(self) -> list[ModelInfo]:
        loaded = set(self.loaded_models())
        specs = [*catalog.BUILTIN, *self.checkpoint_folder.specs()]
        return [_model_info(spec, spec.name in loaded, self.options.random_weights) for spec in specs]

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
            Item(i, p.request.prompt_loras()[0], p.request.negative_prompt, seed, k)
            for i, p in enumerate(plans)
            for k, seed in enumerate(p.seeds)
        ]
        req = first.request
        size = (req.batch_size or req.n_images) if len(plans) == 1 else len(items)
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        prepared = [prepare_inputs(p.request) for p in plans] if req.init_image is not None else None
        refiner = self._refiner(first)
        inversions = self._inversions(first, loaded)
        vae = self._vae(first, loaded)
        pipes = [loaded.pipe] + ([refiner.pipe] if refiner is not None else [])
        with lora_applied(loaded.pipe, list(first.loras), loaded.family_spec), vaes.swapped(pipes, vae):
            outputs = [
                run_batch(loaded, first, b, on_step, n, len(batches), [_input_of(prepared, i) for i in b] if prepared
                          else None, refiner, inversions)
                for n, b in enumerate(batches)
            ]  # fmt: skip
        results = _split_results([p.request for p in plans], items, outputs, loaded, fresh)
        for result, p in zip(results, plans, strict=True):
            result.metadata |= _addon_metadata(p)
        return results

    def _inversions(self, p: Plan, loaded: LoadedModel) -> Inversions | None:
        """The vectors of the plan's embeddings, checked against the model's text encoders, on their device."""
        if not p.embeddings:
            return None
        widths = _encoder_widths(loaded.pipe)
        encoders = [e for e in (loaded.pipe.text_encoder, getattr(loaded.pipe, "text_encoder_2", None)) if e]
        vectors = {}
        for file in p.embeddings:
            emb = self.embedding_library.load(file)
            ti.check_fits(emb, widths, loaded.family_spec.label)
            vectors[file.name] = tuple(v.to(e.device, e.dtype) for v, e in zip(emb.vectors, encoders, strict=True))
        return Inversions(vectors)

    def _vae(self, p: Plan, loaded: LoadedModel) -> Any:
        """The plan's VAE, loaded once per model, device and dtype (the two most recent stay loaded)."""
        if p.vae is None:
            return None
        own = loaded.pipe.vae
        key = (p.vae.key, loaded.spec.name, loaded.device.id, str(own.dtype))
        if key not in self._vaes:
            while len(self._vaes) >= 2:
                self._vaes.popitem(last=False)
            self._vaes[key] = vaes.load_vae(p.vae, own, allow_pickle=self.options.allow_pickle)
        self._vaes.move_to_end(key)
        return self._vaes[key]


def _encoder_widths(pipe: Any) -> tuple[int, ...]:
    encoders = (pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    return tuple(int(e.config.hidden_size) for e in encoders if e is not None)


def _config_widths(spec: ModelSpec) -> tuple[int, ...] | None:
    """Text encoder widths from a model's configs (None if it has none here, e.g. a hub id not yet fetched)."""
    import json

    folder = spec.config_dir
    if folder is None:
        return None
    widths = []
    for name in ("text_encoder", "text_encoder_2"):
        file = folder / name / "config.json"
        if file.is_file():
            widths.append(int(json.loads(file.read_text()).get("hidden_size", 0)))
    return tuple(widths) or None


def _input_of(prepared: list[list[InpaintInput]], item: Item) -> InpaintInput:
    """The prepared init image of an item: its request's init images cycle over the request's images."""
    mine = prepared[item.owner]
    return mine[item.index % len(mine)]


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
    """LoRAs, embeddings, VAE and clip skip of a plan, for the metadata and A1111's infotext (`Lora hashes`,
    `TI hashes`, `VAE`, `VAE hash`, `Clip skip`)."""
    loras = [{"name": lo.ref.name, "weight": lo.ref.weight, "te_weight": lo.ref.text_weight, "hash": lo.file.hash}
             for lo in p.loras]  # fmt: skip
    embeddings = [{"name": f.name, "hash": f.sha256[:10], "file": f.path.name} for f in p.embeddings]
    vae = p.vae
    return {"loras": loras, "lora_hashes": lora_infotext(list(p.loras)), "clip_skip": p.request.clip_skip or 1,
            "embeddings": embeddings, "ti_hashes": ti.infotext(p.embeddings),
            "vae": vae.name if vae else None, "vae_hash": vae.hash if vae else None,
            "vae_file": vae.path.name if vae else None}  # fmt: skip


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
