"""The service between the routes and the engines: plans, queues, tracks and records jobs (one engine per device)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sdplay import catalog
from sdplay.availability import how_to_get_on_server
from sdplay.errors import ModelNotAvailable, SdplayError
from sdplay.limits import SpeedMeter, WorkLimits, check_work, device_kind, limits_for
from sdplay.plan import Limits, Plan
from sdplay.protocol import EngineProtocol
from sdplay.server.errors import Conflict, NotFound, QueueFull
from sdplay.server.gallery import Gallery
from sdplay.server.jobs import Job, JobOutput, JobQueue, JobStatus
from sdplay.server.metrics import Metrics
from sdplay.server.records import JobFailure, JobRecord, JobResult
from sdplay.server.settings import Settings
from sdplay.server.storage import UrlSigner, check_job_id
from sdplay.server.uploads import Uploads
from sdplay.server.worker import Worker
from sdplay.types import Catalog, GenerationRequest, ModelInfo

if TYPE_CHECKING:
    from sdplay.loras import AddonFile

log = logging.getLogger(__name__)

# OpenAI model names that clients send by default; they mean "the server's default model".
OPENAI_MODEL_NAMES = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")


class Service:
    """Owns the queue, the job table, the gallery, the engines (one per device) and their worker threads."""

    def __init__(
        self, settings: Settings, engines: EngineProtocol | Sequence[EngineProtocol], gallery: Gallery | None = None
    ):
        self.settings = settings
        self.engines: list[EngineProtocol] = [engines] if isinstance(engines, EngineProtocol) else list(engines)
        if not self.engines:
            raise ValueError("a service needs at least one engine")
        self.limits = Limits(settings.max_images, settings.max_steps, settings.max_side, catalog_only=True)
        self.gallery = gallery or Gallery(settings.gallery_db, settings.output_dir)
        self.queue = JobQueue(settings.max_queue)
        self.metrics = Metrics(lambda: len(self.queue))
        self.signer = UrlSigner(settings.url_secret, settings.url_ttl_s)
        self.catalog = Catalog()
        self.uploads = Uploads()  # input images for later jobs (native API)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()
        self.stopping = False
        self.started_at = time.time()
        self.workers = [Worker(self, engine, index) for index, engine in enumerate(self.engines)]
        self.speed = SpeedMeter()  # measured by the workers, sizes the work limits
        self._kinds: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Mark jobs a previous process left unfinished, read the catalog, start the workers."""
        interrupted = self.gallery.mark_interrupted()
        if interrupted:
            log.warning("%d job(s) left by the previous run were marked failed (interrupted by restart)", interrupted)
        self.refresh_catalog()
        self.metrics.start_device_metrics(list(dict.fromkeys([*self.settings.devices, "cpu"])))
        for worker in self.workers:
            worker.start()
        for name in self.settings.models_preload:
            for worker in self.workers:  # every device holds the preloaded models
                worker.preload(name)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs, cancel the running ones between steps, and close the gallery."""
        self.stopping = True
        self.queue.close()
        for job in self.queue.drain():
            self._fail_for_shutdown(job)
        for job in self.running():
            job.cancel_requested = True
        for worker in self.workers:
            worker.join(timeout)
        for job in list(self.jobs.values()):
            if not job.status.terminal:
                self._fail_for_shutdown(job)
        self.metrics.stop()
        self.gallery.close()

    def _fail_for_shutdown(self, job: Job) -> None:
        err = SdplayError("The server shut down before the job finished.", hint="Submit it again.")
        self.finish(job, JobStatus.FAILED, error=err)

    @property
    def engine(self) -> EngineProtocol:
        """The first device's engine (the one a single-device server has)."""
        return self.engines[0]

    def refresh_catalog(self) -> None:
        """Read models and samplers from the engines (worker threads or start-up only); loaded on any device."""
        try:
            catalogs = [engine.catalog() for engine in self.engines]
        except Exception:
            log.exception("could not read the engine's models and samplers")
            return
        loaded = {m.name for c in catalogs for m in c.models if m.loaded}
        models = tuple(replace(m, loaded=m.name in loaded) for m in catalogs[0].models)
        self.catalog = Catalog(models, catalogs[0].samplers)

    def loras(self) -> list[AddonFile]:
        """The LoRA files the engines offer (one folder scan, no model work)."""
        return self.engines[0].loras()

    def refresh_checkpoints(self) -> None:
        """Re-read the checkpoints folders, then the catalog (which models exist and which are here)."""
        self._refresh("checkpoints")
        self.refresh_catalog()

    def refresh_loras(self) -> None:
        self._refresh("lora")

    def embeddings(self, model: str | None) -> dict[str, Any]:
        """A1111's embeddings listing for `model`: those that fit its text encoders are "loaded"."""
        return self.engines[0].embeddings(model)

    def find_embedding(self, name: str) -> Any:
        """An embedding file by name (InvalidRequest listing the close ones if there is none)."""
        return self.engines[0].find_embedding(name)

    def refresh_embeddings(self) -> None:
        self._refresh("embeddings")

    def vaes(self) -> list:
        """The VAE files and folders the engines offer."""
        return self.engines[0].vae_files()

    def refresh_vaes(self) -> None:
        self._refresh("vae")

    def check_vae(self, name: str) -> None:
        """Refuse an unknown VAE name now (listing the close ones), as a request naming it would be."""
        self.engines[0].find_vae(name, catalog_only=True)

    def _refresh(self, kind: str) -> None:
        for engine in self.engines:
            engine.refresh_folder(kind)

    def usable(self, info: ModelInfo) -> bool:
        """True if the model can run here: its weights are present, or models are built with random weights."""
        return info.usable or info.available or self.settings.random_weights

    def usable_models(self) -> list[ModelInfo]:
        return [m for m in self.catalog.models if self.usable(m)]

    def healthy(self) -> bool:
        return not self.stopping and all(w.is_alive() for w in self.workers)

    # -- submission ------------------------------------------------------------------------
    def default_model(self) -> str:
        wanted = self.settings.default_model or catalog.DEFAULT_MODEL
        info = self.catalog.find_model(wanted)
        if info is None:
            usable = self.usable_models()
            info = usable[0] if usable else None
        if info is None:
            raise ModelNotAvailable("No model is available on this server.", hint="Start it with --random-weights.")
        return info.name

    def plan(self, request: GenerationRequest) -> Plan:
        """The plan of `request` on the least busy device's engine: the server's only resolution of it."""
        name = request.model
        if not name or name.strip().lower() in OPENAI_MODEL_NAMES:  # the server's default model
            name = self.default_model()
        info = self.catalog.find_model(name)
        if info is None:
            names = ", ".join(m.name for m in self.catalog.models)
            raise ModelNotAvailable(f"Unknown model {name!r}.", field="model", hint=f"Choose one of: {names}.")
        if not self.usable(info):
            loadable = [m.name for m in self.usable_models()]
            hint = how_to_get_on_server(info.name, _repo_id(info.name), loadable)
            raise ModelNotAvailable(f"Model {info.name} is not on this server.", field="model", hint=hint)
        engine = self.engines[self._least_busy(range(len(self.engines)))]
        plan = engine.plan(request.with_(model=info.name), self.limits)
        check_work(plan.request, self.limits_of(plan))  # the device's pixels x steps and time limits
        return plan

    def limits_of(self, plan: Plan) -> WorkLimits:
        """The work limits of the device a plan runs on, for its model (sdplay.limits)."""
        return self.work_limits(plan.request.model or "", plan.device.id, plan.device.kind)

    def work_limits(self, model: str, device: str | None = None, kind: str | None = None) -> WorkLimits:
        """The work limits of `device` for `model`; without a device, those that hold on every device here."""
        s, limits = self.settings, None
        targets = [(device, kind)] if device else [(e.device, None) for e in self.engines]
        for name, known in dict.fromkeys(targets):
            name = str(name)
            kind_of = known or self._kinds.get(name) or self._kinds.setdefault(name, device_kind(name))
            mine = limits_for(name, kind_of, self.speed.rate(name, model), max_seconds=s.max_request_s,
                              max_work=s.max_work, max_pixels=s.max_pixels)  # fmt: skip
            limits = mine if limits is None else limits.tighter(mine)
        assert limits is not None  # a service has at least one engine
        return limits

    def _least_busy(self, candidates) -> int:
        """Of the `candidates` (engine indices), the one with the fewest unfinished jobs (the first on a tie)."""
        candidates = list(candidates)
        if len(candidates) == 1:
            return candidates[0]
        with self._lock:
            pending = dict.fromkeys(candidates, 0)
            for job in self.jobs.values():
                if not job.status.terminal and job.engine in pending:
                    pending[job.engine] += 1
        return min(candidates, key=pending.__getitem__)

    def _engine_for(self, plan: Plan) -> int:
        """The least busy engine of the plan's device (engines of one device id are interchangeable; "auto": an
        engine that follows each plan's device)."""
        same = [i for i, engine in enumerate(self.engines) if engine.device in (plan.device.id, "auto")]
        if not same:
            raise SdplayError(f"No engine runs on {plan.device.id} here.", hint="Plan the request on this server.")
        return self._least_busy(same)

    def submit(
        self,
        request: GenerationRequest | Plan,
        api: str,
        *,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        preview_steps: frozenset[int] = frozenset(),
        png_text: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Queue a job (a request, or a plan this service made); returns (job id, replayed) where replayed means the
        Idempotency-Key was seen before."""
        plan = request if isinstance(request, Plan) else self.plan(request)
        prepared = plan.request
        engine = self._engine_for(plan)
        with self._lock:
            if idempotency_key:
                prior = self._prior(idempotency_key, body_hash)
                if prior:
                    return prior, True
            job = Job(prepared, api=api, preview_steps=preview_steps, idempotency_key=idempotency_key, plan=plan,
                      engine=engine, png_text=dict(png_text or {}))  # fmt: skip
            if not self.queue.put(job):
                self.metrics.rejected.inc()
                raise QueueFull(
                    f"The queue is full ({self.settings.max_queue} jobs waiting).",
                    retry_after=self._retry_after(),
                    hint="Retry after the number of seconds in the Retry-After header.",
                )
            self.jobs[job.id] = job
            if idempotency_key:
                self._by_key[idempotency_key] = job.id
        record = JobRecord(job.id, api, job.status, job.created_at, prepared.to_dict(),
                           idempotency_key=idempotency_key, body_hash=body_hash)  # fmt: skip
        self.gallery.add_job(record)
        return job.id, False

    def _prior(self, key: str, body_hash: str | None) -> str | None:
        """The job already submitted under `key`, checking it was the same request."""
        job_id = self._by_key.get(key)
        record = self.gallery.job_for_key(key)
        if record is None and job_id is None:
            return None
        if record is not None and body_hash and record.body_hash and record.body_hash != body_hash:
            raise Conflict(
                "This Idempotency-Key was already used for a different request.",
                field="Idempotency-Key",
                hint="Use a new key for a new request; reuse a key only to retry the same request.",
            )
        return job_id or record.id  # type: ignore[union-attr]

    def _retry_after(self) -> int:
        recent = [j.elapsed for j in list(self.jobs.values())[-20:] if j.status is JobStatus.DONE]
        per_job = sum(recent) / len(recent) if recent else 2.0
        return max(1, min(60, round(per_job * max(1, len(self.queue)) / max(1, len(self.workers) * 4))))

    # -- queries ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def running(self) -> list[Job]:
        return [j for j in list(self.jobs.values()) if j.status is JobStatus.RUNNING]

    def active(self) -> list[Job]:
        return [j for j in list(self.jobs.values()) if not j.status.terminal]

    def position(self, job: Job) -> int | None:
        return self.queue.position(job)

    def record(self, job_id: str) -> JobRecord:
        """A finished or older job from the gallery database; NotFound if it never existed."""
        record = self.gallery.get_job(check_job_id(job_id))
        if record is None:
            raise NotFound(f"No job {job_id}.", field="id", hint="List jobs with GET /api/v1/jobs.")
        return record

    async def wait(self, job: Job) -> Job:
        """Wait (without blocking the event loop) until the job is done, failed or cancelled."""
        q = job.subscribe(asyncio.get_running_loop())
        try:
            while not job.status.terminal:
                event = await q.get()
                if event["event"] in ("done", "failed", "cancelled"):
                    break
        finally:
            job.unsubscribe(q)
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, a running one at its next step; None if it is not live here."""
        job = self.jobs.get(job_id)
        if job is None or job.status.terminal:
            return job
        if self.queue.remove(job):
            self.finish(job, JobStatus.CANCELLED)
        else:
            job.cancel_requested = True
        return job

    # -- completion (worker threads) -------------------------------------------------------
    def finish(
        self, job: Job, status: JobStatus, *, error: SdplayError | None = None, output: JobOutput | None = None
    ) -> None:
        """Record a job's outcome in memory, the gallery and the metrics, then tell its subscribers."""
        if job.status.terminal:
            return
        now = time.time()
        result = None
        if output is not None:
            result = JobResult(tuple(output.seeds), tuple(output.image_ids), output.width, output.height,
                               output.timings)  # fmt: skip
        try:
            self.gallery.job_finished(job.id, status, finished_at=now, started_at=job.started_at,
                                      error=JobFailure.of(error) if error else None, result=result)  # fmt: skip
        except Exception:  # a broken database must not leave the job hanging
            log.exception("could not record the end of job %s", job.id)
        self.metrics.jobs.labels(job.api, status.value).inc()
        self.metrics.latency.labels(job.api, status.value).observe(now - job.created_at)
        job.update({"event": status.value}, status=status, finished_at=now, error=error, output=output)
        self._trim()

    def _trim(self) -> None:
        with self._lock:
            extra = len(self.jobs) - self.settings.job_history
            for job_id in [k for k, j in self.jobs.items() if j.status.terminal][: max(0, extra)]:
                job = self.jobs.pop(job_id)
                if job.idempotency_key:
                    self._by_key.pop(job.idempotency_key, None)


def _repo_id(name: str) -> str | None:
    spec = catalog.builtin(name)
    return spec.repo_id if spec is not None else None
