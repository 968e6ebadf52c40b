"""The engine deployment: each Ray Serve replica owns one device and one `Engine` with its model cache."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from ray import serve

from sdplay import catalog
from sdplay.devices import DeviceInfo, resolve_device
from sdplay.errors import Cancelled, SdplayError
from sdplay.loading import LoadOptions
from sdplay.plan import Plan
from sdplay.server.scaleout import wire
from sdplay.server.scaleout.options import RayOptions
from sdplay.types import ModelInfo

log = logging.getLogger(__name__)


class EngineReplica:
    """Runs generations on this replica's device and streams their steps back; writes no files."""

    async def __init__(self, options: RayOptions, load: LoadOptions):
        from sdplay.accel.runtime import configure_torch

        configure_torch()  # the replica owns its process
        self.options = options
        self.engine = replica_engine(options, load)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.actor_name = context.replica_id.to_full_id_str()

        async def sdplay_load_model(model_id: str) -> Resident:
            await asyncio.to_thread(self.engine.load, model_id)
            return Resident(self.engine, model_id)

        self.model = serve.multiplexed(max_num_models_per_replica=options.models_per_replica)(sdplay_load_model)
        for name in options.preload[: options.models_per_replica]:
            await self.model(catalog.resolve(name).name)

    def catalog(self) -> dict[str, Any]:
        """The models (with any preloaded local folder or file) and samplers this replica offers."""
        return {"models": models_with_preloaded(self.engine, self.options.preload), "samplers": self.engine.samplers()}

    async def load(self, model: str) -> str:
        """Load `model` here (the router then prefers this replica for it); returns this replica's id."""
        await self.model(model)
        return self.replica

    async def run(self, plans: list[Plan]) -> AsyncIterator[dict[str, Any]]:
        """Run compatible plans as one batch: a "started" event, "step" events, then "result" or "error"."""
        yield {"kind": "started", "replica": self.replica, "actor": self.actor_name}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()  # set when the caller goes away: the engine stops at its next step

        def on_step(info) -> None:
            if stop.is_set():
                raise Cancelled("The caller went away.", hint="Submit the job again.")
            loop.call_soon_threadsafe(events.put_nowait, wire.step_event(info, self.options.stream_latents))

        def work():
            if stop.is_set():
                raise Cancelled("The caller went away before the job started.")
            # the ingress planned them for "a replica's device": this replica's, now
            device = resolve_device(self.engine.device, self.engine.devices())
            return self.engine.generate_batch([bind(p, device) for p in plans], on_step)

        try:
            await self.model(plans[0].request.model or catalog.DEFAULT_MODEL)
            task = loop.run_in_executor(None, work)
            task.add_done_callback(lambda _: events.put_nowait(None))
            while (event := await events.get()) is not None:
                yield event
            results = await task
        except SdplayError as exc:
            yield wire.error_event(exc)
            return
        finally:
            stop.set()
        yield {"kind": "result", "results": [wire.to_wire(r) for r in results]}


def bind(plan: Plan, device: DeviceInfo) -> Plan:
    """A plan made for "a replica's device" (`auto`), on this replica's device; nothing else changes."""
    return replace(plan, device=device, request=plan.request.with_(device=device.id))


def replica_engine(options: RayOptions, load: LoadOptions):
    """The engine of one replica: the server's load options, on the device Ray gives the replica."""
    from sdplay.engine import Engine

    # The multiplexer decides which models stay (and tells the router); the engine never evicts on its own.
    return Engine(load, device=options.device, max_models=options.models_per_replica + 1, monitor=True)


class Resident:
    """A model held by one replica; the multiplexer deletes it to make room, which unloads it from the engine."""

    def __init__(self, engine, name: str):
        self.engine = engine
        self.name = name
        self._released = False

    def __del__(self) -> None:
        if not self._released:  # the multiplexer calls this once, garbage collection may call it again
            self._released = True
            self.engine.unload(self.name)


def models_with_preloaded(engine, preload: tuple[str, ...]) -> list[ModelInfo]:
    """The engine's catalog plus an entry for each preloaded model that is a local folder or file."""
    extra = [model_info(catalog.resolve(name)) for name in preload if catalog.builtin(name) is None]
    return list(engine.models()) + extra


def model_info(spec: catalog.ModelSpec) -> ModelInfo:
    """A catalog entry for a spec the catalog does not list (a local folder or checkpoint)."""
    return ModelInfo(
        name=spec.name, family=spec.family.value, native_size=spec.native_size,
        default_sampler=spec.default_sampler, default_steps=spec.default_steps,
        default_guidance=spec.default_guidance, available=True, loaded=True,
        description=f"Local model {spec.name}", sizes=spec.sizes, how_to_get="Preloaded by every replica.",
    )  # fmt: skip
