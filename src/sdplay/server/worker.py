"""One worker thread per engine (device): the only code that calls its engine. Batches compatible queued jobs."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Protocol

from sdplay import cancel
from sdplay.errors import Cancelled, SdplayError, TimeLimitExceeded
from sdplay.limits import SpeedMeter, WorkLimits, work_of
from sdplay.plan import Plan
from sdplay.protocol import EngineProtocol
from sdplay.server.errors import InternalError
from sdplay.server.gallery import Gallery
from sdplay.server.jobs import Job, JobOutput, JobQueue, JobStatus
from sdplay.server.metrics import Metrics
from sdplay.server.records import ImageRecord
from sdplay.server.settings import Settings
from sdplay.server.storage import png_bytes, save_result
from sdplay.types import GenerationResult, StepInfo


class Service(Protocol):
    """What a worker needs of the service that owns it (sdplay.server.service.Service)."""

    settings: Settings
    queue: JobQueue
    gallery: Gallery
    metrics: Metrics
    stopping: bool

    def finish(
        self, job: Job, status: JobStatus, *, error: SdplayError | None = None, output: JobOutput | None = None
    ) -> None: ...

    def refresh_catalog(self) -> None: ...

    def limits_of(self, plan: Plan) -> WorkLimits: ...

    @property
    def speed(self) -> SpeedMeter: ...


log = logging.getLogger(__name__)


def batch_key(job: Job) -> tuple:
    assert job.plan is not None
    return job.plan.batch_key


class Worker(threading.Thread):
    """Takes its engine's jobs from the shared queue and runs them, gathering compatible ones into batches."""

    def __init__(self, service: Service, engine: EngineProtocol, index: int = 0):
        device = _label(service.settings.devices, index, engine.device)
        super().__init__(name=f"sdplay-worker-{index}-{device}", daemon=True)
        self.service = service
        self.engine = engine
        self.index = index
        self.device = device
        self._preload: list[str] = []
        self._last_preview: dict[str, float] = {}
        # Encoding and storing images overlaps the next batch on the device (PNG at 1024x1024: ~0.1 s per image).
        self._saver = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"sdplay-save-{device}")

    def preload(self, model: str) -> None:
        """Load `model` before the first job (done on this thread, before taking jobs)."""
        self._preload.append(model)

    def run(self) -> None:
        for model in self._preload:
            self._load(model)
        queue = self.service.queue
        while not self.service.stopping:
            job = queue.get(timeout=0.5, match=self._mine)
            if job is None:
                continue
            batch = self._collect(job)
            try:
                self._run(batch)
            except Exception:  # never let one batch kill the worker
                log.exception("worker %s: unexpected error", self.name)
                for j in batch:
                    self.service.finish(j, JobStatus.FAILED, error=_internal())
            self.service.refresh_catalog()
        self._saver.shutdown(wait=True)  # finish writing what was generated

    def _mine(self, job: Job) -> bool:
        return job.engine == self.index

    def _load(self, model: str) -> None:
        try:
            self.engine.load(model)
            log.info("preloaded %s on %s", model, self.device)
        except SdplayError as exc:
            log.error("could not preload %s: %s", model, exc)
        self.service.refresh_catalog()

    # -- batching --------------------------------------------------------------------------
    def _collect(self, first: Job) -> list[Job]:
        """`first` plus compatible queued jobs, waiting up to the batch window while nothing else waits."""
        settings = self.service.settings
        limit = settings.max_batch
        if limit <= 1 or first.request.n_images >= limit:
            return [first]
        key = batch_key(first)
        batch, images = [first], first.request.n_images

        def fits(job: Job) -> bool:
            nonlocal images
            if images + job.request.n_images > limit:
                return False
            images += job.request.n_images
            return True

        def match(job: Job) -> bool:
            return self._mine(job) and batch_key(job) == key

        queue = self.service.queue
        deadline = time.monotonic() + settings.batch_window_ms / 1000.0
        while True:
            batch += queue.take(match, fits)
            if images >= limit or queue.has_other(match, self._mine) or not queue.wait_for_change(deadline):
                break
        batch += queue.take(match, fits)
        return batch

    # -- running ---------------------------------------------------------------------------
    def _run(self, batch: list[Job]) -> None:
        """Run a batch; if it fails as a whole, run its jobs one by one so one bad job harms no other."""
        live = [j for j in batch if not (j.cancel_requested and self._cancel(j))]
        if not live:
            return
        now = time.time()
        for job in live:
            job.update({"event": "started"}, status=JobStatus.RUNNING, started_at=now)
            self.service.gallery.job_started(job.id, now)
        self.service.metrics.running.inc(len(live))
        self.service.metrics.batch.observe(len(live))
        try:
            exc = self._attempt(live)
            if exc is not None and len(live) > 1 and not isinstance(exc, (Cancelled, TimeLimitExceeded)):
                log.info("batch of %d failed (%s); running its jobs one by one", len(live), exc)
                for job in live:
                    if not job.status.terminal:
                        self._fail_all([job], self._attempt([job]))
            else:
                self._fail_all(live, exc)
        finally:
            self.service.metrics.running.dec(len(live))
            for job in live:
                self._last_preview.pop(job.id, None)

    def _attempt(self, jobs: list[Job]) -> SdplayError | None:
        """Generate `jobs`; the error that stopped them, if any (bugs become InternalError, logged)."""
        try:
            self._generate(jobs)
        except SdplayError as exc:
            return exc
        except Exception:
            log.exception("engine failed on job(s) %s", ", ".join(j.id for j in jobs))
            return _internal()
        return None

    def _generate(self, jobs: list[Job]) -> None:
        plans = [j.plan for j in jobs]
        offsets = [sum(j.request.n_images for j in jobs[:i]) for i in range(len(jobs))]

        def on_step(info: StepInfo) -> None:
            self._on_step(jobs, offsets, info)

        engine = self.engine
        with cancel.checking(self._stop_check(jobs)):  # checked inside each step too, between UNet blocks
            results = [engine.generate(plans[0], on_step)] if len(jobs) == 1 else engine.generate_batch(plans, on_step)
        self._measure(results)
        for job, result in zip(jobs, results, strict=True):
            if not job.status.terminal:  # cancelled while the rest of its batch ran on
                self._saver.submit(self._complete_logged, job, result)

    def _stop_check(self, jobs: list[Job]):
        """Raises Cancelled once every job of the batch is cancelled (or the server stops), TimeLimitExceeded past
        the time limit, which counts from the first check (after loading the model and encoding the prompts)."""
        limit = self.service.limits_of(jobs[0].plan).max_seconds
        deadline: list[float] = []

        def check() -> None:
            if self.service.stopping or all(j.cancel_requested or j.status.terminal for j in jobs):
                raise Cancelled("Cancelled during a step.", hint="Submit the job again to restart it.")
            now = time.monotonic()
            if not deadline:
                deadline.append(now + limit)
            elif now > deadline[0]:
                raise TimeLimitExceeded(
                    f"The job ran past this server's time limit of {limit:g} s and was stopped.",
                    hint="Ask for fewer steps, fewer images or a smaller size (the server's --max-request-s).",
                )

        return check

    def _measure(self, results: list[GenerationResult]) -> None:
        """Feed the device's speed (pixel-steps per second of denoising and decoding) to the work limits; a run
        that loaded the model also warmed it up, so it is not a measure of its speed."""
        if not results or results[0].timings.load > 0:
            return
        t, req = results[0].timings, results[0].request  # phase times are shared by a batch
        work = sum(work_of(r.request) for r in results)
        self.service.speed.record(req.device, req.model or "", work, t.denoising + t.decoding)

    def _fail_all(self, jobs: list[Job], exc: SdplayError | None) -> None:
        if exc is None:
            return
        status = JobStatus.CANCELLED if isinstance(exc, Cancelled) else JobStatus.FAILED
        for job in jobs:
            self.service.finish(job, status, error=None if status is JobStatus.CANCELLED else exc)

    def _cancel(self, job: Job) -> bool:
        self.service.finish(job, JobStatus.CANCELLED)
        return True

    def _on_step(self, jobs: list[Job], offsets: list[int], info: StepInfo) -> None:
        """Progress, previews and cancellation between two steps."""
        for job in jobs:
            if job.cancel_requested and not job.status.terminal:
                self._cancel(job)
        cancel.check_now()  # the time limit
        live = [(j, off) for j, off in zip(jobs, offsets, strict=True) if not j.status.terminal]
        if not live or self.service.stopping:
            raise Cancelled("Cancelled between two steps.", hint="Submit the job again to restart it.")
        fraction = info.fraction
        for job, offset in live:
            elapsed = time.time() - (job.started_at or time.time())
            eta = elapsed / fraction * (1 - fraction) if fraction > 0 else None
            event = {"event": "progress", "step": info.step, "total_steps": info.total_steps, "progress": fraction,
                     "eta_s": eta, "batch_index": info.batch_index, "batch_count": info.batch_count}  # fmt: skip
            job.update(event, step=info.step, total_steps=info.total_steps, progress=fraction, eta_s=eta)
            if info.latents is not None and self._preview_due(job, info.step):
                self._preview(job, info, offset)

    def _preview_due(self, job: Job, step: int) -> bool:
        now = time.monotonic()
        if (
            step in job.preview_steps
            or now - self._last_preview.get(job.id, 0.0) >= self.service.settings.preview_interval_s
        ):
            self._last_preview[job.id] = now
            return True
        return False

    def _preview(self, job: Job, info: StepInfo, offset: int) -> None:
        from sdplay.previews import latents_to_preview

        try:
            side = max(info.latents.shape[-2:])
            image = latents_to_preview(info.latents, info.family, offset, scale=max(1, min(8, 256 // side)))
            png = png_bytes(image)
        except Exception:  # a preview is a nicety: never fail the job for it
            log.debug("preview failed", exc_info=True)
            return
        job.update({"event": "preview", "step": info.step, "png": png}, preview_png=png, preview_step=info.step)

    def _complete_logged(self, job: Job, result: GenerationResult) -> None:
        try:
            self._complete(job, result)
        except Exception:  # a bug while saving fails this job only
            log.exception("saving job %s failed", job.id)
            self.service.finish(job, JobStatus.FAILED, error=_internal())

    def _complete(self, job: Job, result: GenerationResult) -> None:
        """Write the images, add them to the gallery and mark the job done (or failed if saving fails)."""
        from sdplay.images import parameters_for

        service = self.service
        try:
            files = save_result(result, service.settings.output_dir, job.id, job.png_text)
            req = result.request
            ids = []
            for i, (path, seed) in enumerate(zip(files, result.seeds, strict=True)):
                ids.append(service.gallery.add_image(_image_record(job, result, i, seed, path, service)))
            width, height = result.images[0].size if result.images else (req.width or 0, req.height or 0)
            output = JobOutput(
                seeds=list(result.seeds), files=files, image_ids=ids, width=width, height=height,
                request=req, timings=asdict(result.timings), metadata=result.metadata,
                infotexts=[parameters_for(result, i) for i in range(len(files))],
            )  # fmt: skip
        except SdplayError as exc:
            service.finish(job, JobStatus.FAILED, error=exc)
            return
        service.metrics.images.labels(req.model or "").inc(len(files))
        service.finish(job, JobStatus.DONE, output=output)


def _image_record(job: Job, result: GenerationResult, index: int, seed: int, path, service: Service) -> ImageRecord:
    req = result.request
    width, height = result.images[index].size  # the output's size (hires fix, only-masked inpainting)
    return ImageRecord(
        job_id=job.id, index=index, created_at=time.time(), prompt=req.prompt, negative_prompt=req.negative_prompt,
        model=req.model or "", seed=seed, width=width, height=height, steps=req.steps, guidance=req.guidance,
        sampler=req.sampler, request=req.to_dict() | {"seed": seed, "n_images": 1}, timings=asdict(result.timings),
        telemetry=result.telemetry, file=str(path.relative_to(service.settings.output_dir)),
    )  # fmt: skip


def _internal() -> SdplayError:
    return InternalError(
        "The worker hit an unexpected error.", hint="The server log has the details; please report it."
    )


def _label(names: tuple[str, ...], index: int, device: str) -> str:
    """What the worker is called: its engine's device; for an engine that follows each plan's device ("auto"), the
    server's name for the slot (a Ray dispatch slot shares one client) or else the device "auto" resolves to here."""
    if device != "auto":
        return device
    name = names[index] if index < len(names) else "auto"
    if name != "auto":
        return name
    from sdplay.devices import discover_devices, resolve_device

    return resolve_device("auto", discover_devices()).id
