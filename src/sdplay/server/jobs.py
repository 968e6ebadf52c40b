"""Jobs, their live state and event subscriptions, and the bounded queue the workers take them from."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sdplay.errors import SdplayError
from sdplay.plan import Plan
from sdplay.types import GenerationRequest


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class JobOutput:
    """What a finished job produced: files on disk and how they were made (no pixels kept in memory)."""

    seeds: list[int]
    files: list[Path]
    image_ids: list[int]
    width: int
    height: int
    request: GenerationRequest  # as planned (defaults filled in)
    timings: dict[str, float]
    metadata: dict[str, Any]
    infotexts: list[str]


@dataclass(eq=False)
class Job:
    """One submitted request and everything the APIs report about it."""

    request: GenerationRequest  # the plan's request: every default filled in
    api: str = "native"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    eta_s: float | None = None
    error: SdplayError | None = None
    output: JobOutput | None = None
    preview_png: bytes | None = None
    preview_step: int = 0
    preview_steps: frozenset[int] = frozenset()  # steps that must publish a preview (OpenAI partial_images)
    cancel_requested: bool = False
    idempotency_key: str | None = None
    plan: Plan | None = None  # what the engine runs
    engine: int = 0  # index of the engine (device) that runs it
    png_text: dict[str, str] = field(default_factory=dict)  # extra PNG text chunks (ComfyUI: prompt, workflow)
    _watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot_event(self) -> dict[str, Any]:
        """The event a new subscriber sees first: the current status, or the terminal outcome."""
        if self.status.terminal:
            return {"event": self.status.value}
        if self.status is JobStatus.RUNNING:
            return {"event": "progress", "step": self.step, "total_steps": self.total_steps}
        return {"event": "status"}

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        """A queue (for `loop`) receiving this job's events, starting with the current state."""
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            q.put_nowait(self.snapshot_event())
            if not self.status.terminal:
                self._watchers.append((loop, q))
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        with self._lock:
            self._watchers = [(lp, wq) for lp, wq in self._watchers if wq is not q]

    def update(self, event: dict[str, Any] | None = None, **changes: Any) -> None:
        """Change fields under the lock and send `event` to every subscriber (from any thread)."""
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)
            watchers = list(self._watchers)
            if self.status.terminal:
                self._watchers.clear()
        if event is None:
            return
        for loop, q in watchers:
            with contextlib.suppress(RuntimeError):  # that client's event loop is gone
                loop.call_soon_threadsafe(q.put_nowait, event)

    @property
    def elapsed(self) -> float:
        end = self.finished_at or time.time()
        return end - (self.started_at or end)


class JobQueue:
    """A bounded FIFO of jobs; workers may take several compatible jobs at once for a batch."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, job: Job) -> bool:
        """Append `job`; False if the queue is full."""
        with self._cond:
            if len(self._items) >= self.maxsize:
                return False
            self._items.append(job)
            self._cond.notify_all()
            return True

    def get(self, timeout: float, match: Callable[[Job], bool] | None = None) -> Job | None:
        """The oldest job (that `match`es), waiting up to `timeout` seconds; None on timeout or once closed."""
        with self._cond:
            found = self._first(match)
            if found is None and not self._closed:
                self._cond.wait(timeout)
                found = self._first(match)
            if found is None or self._closed:
                return None
            self._items.remove(found)
            return found

    def _first(self, match: Callable[[Job], bool] | None) -> Job | None:
        return next((job for job in self._items if match is None or match(job)), None)

    def take(self, match: Callable[[Job], bool], budget: Callable[[Job], bool]) -> list[Job]:
        """Remove and return queued jobs (oldest first) that `match` and still fit the `budget`."""
        taken = []
        with self._cond:
            for job in list(self._items):
                if match(job) and budget(job):
                    self._items.remove(job)
                    taken.append(job)
        return taken

    def wait_for_change(self, deadline: float) -> bool:
        """Sleep until something is queued or `deadline` (monotonic) passes; False once the time is up."""
        with self._cond:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return False
            self._cond.wait(left)
            return time.monotonic() < deadline

    def has_other(self, match: Callable[[Job], bool], among: Callable[[Job], bool] | None = None) -> bool:
        """True if a queued job (of those `among`) does not `match` (so waiting for a batch would delay it)."""
        with self._cond:
            return any(not match(job) for job in self._items if among is None or among(job))

    def remove(self, job: Job) -> bool:
        with self._cond:
            try:
                self._items.remove(job)
                return True
            except ValueError:
                return False

    def position(self, job: Job) -> int | None:
        """0 for the next job to run, None if `job` is not queued."""
        with self._cond:
            for i, queued in enumerate(self._items):
                if queued is job:
                    return i
        return None

    def drain(self) -> list[Job]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
