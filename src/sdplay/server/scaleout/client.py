"""The engine the server sees on Ray: forwards generations to the engine deployment through a Serve handle.

Routing: each call names its model as the multiplexed model id, so Ray Serve sends it to a replica that
already holds that model when one has room.

Failure of a replica mid-job: the call is retried once (on another replica: Ray's router drops a dead one),
then reported failed with `ReplicaFailed`. A job completes at most once because
1. a replica has no side effects: it writes no files and no database rows, its images come back as bytes;
2. a job's outcome is recorded only by the ingress, from the "result" event of one attempt;
3. the ingress stops reading at the first "result" and only starts another attempt when the previous one
   ended without one (its replica died), so at most one attempt ever delivers a result.
A replica that dies after computing but before sending its result simply never completed the job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from dataclasses import replace
from typing import Any

import ray.exceptions

from sdplay import catalog
from sdplay.catalog import ModelSpec
from sdplay.devices import DeviceInfo
from sdplay.errors import Cancelled, ModelNotAvailable, SdplayError
from sdplay.loading import LoadOptions
from sdplay.loras import AddonFile, Folder
from sdplay.plan import Limits, Plan, check_compatible, plan
from sdplay.server.scaleout import wire
from sdplay.server.scaleout.options import RayOptions
from sdplay.types import Catalog, GenerationRequest, GenerationResult, ModelInfo, StepCallback

log = logging.getLogger(__name__)

ATTEMPTS = 2  # the first run plus one retry on another replica
CATALOG_TTL_S = 10.0


class StreamEnded(Exception):
    """A replica's stream stopped without a result: the replica went away."""


LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, StreamEnded)


class ReplicaFailed(SdplayError):
    """Engine replicas died while running a job, twice, or none took it in time."""

    status = 503


class RayEngineClient:
    """An EngineProtocol whose generations run on the replicas of the engine deployment.

    The ingress plans each request (validation, defaults, seed, batching, LoRA files) for "the replicas' device"
    and sends the plans; a replica binds each to its own device and runs it (nothing is resolved again there).
    Its load options are the replicas' (the server's flags); the model and LoRA files a plan names are read at
    the same paths on every replica's node.
    """

    def __init__(self, handle, options: RayOptions, load: LoadOptions | None = None):
        self.handle = handle
        self.ray = options
        self.device = "auto"  # the replicas' devices: Ray places them
        self.options = load or LoadOptions(random_weights=options.random_weights)  # as every replica has them
        self.lora_folder = Folder(self.options.lora_dir, "LoRA")  # the replicas' folder, at the same path
        gpu = (options.num_gpus or 0) > 0 or options.device.startswith(("cuda", "xpu", "mps"))
        kind = options.device.split(":")[0] if options.device not in ("auto", "") else ("cuda" if gpu else "cpu")
        self._device = DeviceInfo("auto", kind, 0, f"a Ray Serve replica ({kind})")
        self._catalog: dict[str, Any] = {"models": [], "samplers": []}
        self._catalog_at = 0.0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.running: dict[int, dict[str, Any]] = {}  # call id -> prompts, model, attempt, replica, since
        self.served: dict[str, int] = {}  # replica id -> results delivered
        self.retries = 0
        self.failures = 0

    # -- catalog ---------------------------------------------------------------------------
    async def fetch_catalog(self, timeout_s: float) -> None:
        """Read models and samplers from a replica (from async code, e.g. the ingress constructor)."""
        self._set_catalog(await asyncio.wait_for(self.handle.catalog.remote(), timeout_s))

    def _set_catalog(self, value: dict[str, Any]) -> None:
        self._catalog, self._catalog_at = value, time.monotonic()

    def _fresh_catalog(self) -> dict[str, Any]:
        """The catalog, re-read from a replica when stale; the last one known inside an event loop or on error."""
        if time.monotonic() - self._catalog_at > CATALOG_TTL_S and not _in_event_loop():
            try:
                self._set_catalog(self.handle.catalog.remote().result(timeout_s=30))
            except Exception as exc:  # keep serving with what we knew
                log.warning("could not read the catalog from a replica: %s", exc)
        return self._catalog

    def models(self) -> list[ModelInfo]:
        return list(self._fresh_catalog()["models"])

    def catalog(self) -> Catalog:
        fresh = self._fresh_catalog()
        models = tuple(replace(m, usable=m.usable or m.available or self.ray.random_weights) for m in fresh["models"])
        return Catalog(models, tuple(fresh["samplers"]))

    def plan(self, request: GenerationRequest, limits: Limits | None = None) -> Plan:
        return plan(request, models=self._spec, device=self._device, limits=limits, loras=self._lora)

    def _lora(self, name: str) -> AddonFile:
        return self.lora_folder.get(name, "loras")

    def loras(self) -> list[AddonFile]:
        """The LoRA files of the LoRA folder; each replica applies them from the same path on its node."""
        return list(self.lora_folder.files().values())

    def refresh_loras(self) -> None:
        self.lora_folder.refresh()  # replicas look again by themselves when a plan names a file they lack

    def embeddings(self, model: str | None = None) -> dict:
        return {"loaded": {}, "skipped": {}}  # replicas apply no embeddings yet

    def embedding_names(self) -> list[str]:
        return []

    def find_embedding(self, name: str) -> object:
        from sdplay.errors import InvalidRequest

        raise InvalidRequest(
            f"There is no embedding {name!r} here.",
            field="prompt",
            hint="With Ray scale-out, replicas load no embeddings yet: run `sdplay serve` without --ray to use them.",
        )

    def vae_files(self) -> list:
        return []

    def find_vae(self, name: str | None, catalog_only: bool = False) -> object | None:
        from sdplay import vaes
        from sdplay.errors import InvalidRequest

        if vaes.is_none(name) or vaes.is_default(name):
            return None
        raise InvalidRequest(
            f"There is no VAE {name!r} here.",
            field="sd_vae",
            hint="With Ray scale-out, replicas use each model's own VAE (run `sdplay serve` without --ray).",
        )

    def refresh_folder(self, kind: str) -> None:
        if kind == "lora":
            self.lora_folder.refresh()

    def _spec(self, name: str | None) -> ModelSpec:
        """A model the replicas offer: a built-in one, or a local folder or file they preloaded."""
        models = self._fresh_catalog()["models"]
        info = Catalog(tuple(models)).find_model(name or catalog.DEFAULT_MODEL)
        if info is None:
            names = ", ".join(m.name for m in models)
            raise ModelNotAvailable(f"Unknown model {name!r}.", field="model", hint=f"Choose one of: {names}.")
        return catalog.builtin(info.name) or catalog.resolve(info.name)

    def load(self, model: str | None) -> None:
        """Have one replica load `model` (each replica also loads `preload` at start)."""
        self.handle.options(multiplexed_model_id=model).load.remote(model).result(timeout_s=self.ray.start_timeout_s)

    def unload(self, model: str | None = None) -> None:
        """Replicas unload models themselves, least recently used first, to keep `models_per_replica`."""

    # -- generation ------------------------------------------------------------------------
    def generate(self, plan: Plan, on_step: StepCallback | None = None) -> GenerationResult:
        return self.generate_batch([plan], on_step)[0]

    def generate_batch(self, plans: list[Plan], on_step: StepCallback | None = None) -> list[GenerationResult]:
        """Run on one replica; retried once elsewhere if that replica dies, else ReplicaFailed."""
        check_compatible(plans)
        requests = [p.request for p in plans]  # seeds drawn by the plan: a retry makes the same images
        call = next(self._ids)
        self.running[call] = {"prompts": [r.prompt for r in requests], "model": requests[0].model,
                              "attempt": 0, "replica": None, "since": time.time()}  # fmt: skip
        try:
            for attempt in range(1, ATTEMPTS + 1):
                self.running[call] |= {"attempt": attempt, "replica": None}
                try:
                    return self._attempt(call, plans, on_step, attempt)
                except LOST as exc:
                    lost = self.running[call]["replica"]
                    log.warning("replica %s died during attempt %d of %d: %s", lost, attempt, ATTEMPTS, exc)
                    if attempt < ATTEMPTS:
                        self._count("retries")
            self._count("failures")
            raise ReplicaFailed(
                f"The engine replica running this job died, and so did the one it was retried on ({ATTEMPTS} tries).",
                hint="Submit the job again; if it keeps failing, check the replicas' logs (`ray logs`) for the cause, "
                "e.g. running out of memory.",
            )
        finally:
            del self.running[call]

    def _attempt(
        self, call: int, plans: list[Plan], on_step: StepCallback | None, attempt: int
    ) -> list[GenerationResult]:
        """One run on one replica: follow its events until the result (or an error) arrives."""
        model = plans[0].request.model or ""
        stream = self.handle.options(stream=True, multiplexed_model_id=model).run.remote(plans)
        watchdog = threading.Timer(self.ray.start_timeout_s, stream.cancel)  # nobody took it: give up
        watchdog.daemon = True
        watchdog.start()
        try:
            for event in stream:
                kind = event["kind"]
                if kind == "started":
                    watchdog.cancel()
                    self.running[call]["replica"] = event["replica"]
                elif kind == "step" and on_step is not None:
                    on_step(wire.step_info(event))
                elif kind == "error":
                    raise wire.error_from(event)
                elif kind == "result":
                    return self._delivered(call, event["results"], attempt)
        except Cancelled:
            stream.cancel()  # the replica stops at its next step
            raise
        except LOST:
            with contextlib.suppress(Exception):  # if it only looked dead (unreachable), stop it anyway
                stream.cancel()
            raise
        except (ray.exceptions.TaskCancelledError, concurrent.futures.CancelledError) as exc:
            raise self._not_taken() from exc
        finally:
            watchdog.cancel()
        raise StreamEnded("the stream ended without a result")

    def _delivered(self, call: int, results: list[wire.WireResult], attempt: int) -> list[GenerationResult]:
        replica = self.running[call]["replica"]
        with self._lock:
            self.served[replica] = self.served.get(replica, 0) + 1
        serving = {"backend": "ray", "replica": replica, "attempt": attempt}
        return [wire.from_wire(r, serving) for r in results]

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _not_taken(self) -> SdplayError:
        self._count("failures")
        return ReplicaFailed(
            f"No engine replica took the job within {self.ray.start_timeout_s:.0f} s.",
            hint="Check that the cluster has the resources one replica needs (`ray status`) and the replicas' logs.",
        )

    def status(self) -> dict[str, Any]:
        """What runs where, which replicas delivered results, and how many retries and failures there were."""
        running = [dict(v) for v in list(self.running.values())]
        return {"running": running, "served": dict(self.served), "retries": self.retries, "failures": self.failures}


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
