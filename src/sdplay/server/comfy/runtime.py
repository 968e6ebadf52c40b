"""Live ComfyUI prompts: their sdplay jobs, the /ws clients that follow them, and the prompt history."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdplay.server.comfy.plan import Plan
from sdplay.server.jobs import Job, JobStatus

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from sdplay.server.service import Service

log = logging.getLogger(__name__)

MAX_HISTORY = 1000
PREVIEW_IMAGE = 1  # ComfyUI's binary event type; then 1 = JPEG or 2 = PNG, then the image bytes
PNG = 2
CLIENT_BACKLOG = 1000  # messages queued for one slow client before previews are dropped


@dataclass(eq=False)
class ComfyPrompt:
    """One POST /prompt: its graph, its plan and the sdplay jobs that run the plan's samplers."""

    id: str
    number: float
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    plan: Plan
    jobs: list[str] = field(default_factory=list)
    client_id: str | None = None
    status: str = "pending"  # running, success, error, interrupted
    deleted: bool = False
    messages: list[list[Any]] = field(default_factory=list)
    outputs_ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    task: asyncio.Task | None = None

    def queue_item(self) -> list[Any]:
        """The prompt as /queue and /history list it: [number, id, prompt, extra_data, outputs]."""
        return [self.number, self.id, self.graph, self.extra_data, self.outputs]


class Client:
    """One /ws connection; messages are queued and sent by one task, in order."""

    def __init__(self, sid: str, websocket: WebSocket):
        self.sid = sid
        self.websocket = websocket
        self.outbox: asyncio.Queue = asyncio.Queue(CLIENT_BACKLOG)

    def send(self, message: dict[str, Any] | bytes) -> None:
        if isinstance(message, bytes) and self.outbox.qsize() > CLIENT_BACKLOG // 2:
            return  # a preview can wait for the next one
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(message)

    async def pump(self) -> None:
        while True:
            message = await self.outbox.get()
            if isinstance(message, bytes):
                await self.websocket.send_bytes(message)
            else:
                await self.websocket.send_text(json.dumps(message))


class ComfyState:
    """Prompts of this server run, the history of finished ones, and the connected /ws clients."""

    def __init__(self) -> None:
        self.prompts: OrderedDict[str, ComfyPrompt] = OrderedDict()
        self.history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.clients: dict[str, Client] = {}
        self.counter = 0

    # -- clients ---------------------------------------------------------------------------
    def connect(self, sid: str, websocket: WebSocket) -> Client:
        client = Client(sid, websocket)
        self.clients[sid] = client
        return client

    def disconnect(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]

    def send(self, kind: str, data: dict[str, Any], sid: str | None = None) -> None:
        """A JSON message to client `sid`, or to every client when `sid` is None (as ComfyUI does)."""
        self._deliver({"type": kind, "data": data}, sid)

    def _deliver(self, message: dict[str, Any] | bytes, sid: str | None) -> None:
        targets = list(self.clients.values()) if sid is None else [c for c in [self.clients.get(sid)] if c]
        for client in targets:
            client.send(message)

    def status(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self.remaining()}}}

    def broadcast_status(self) -> None:
        self.send("status", self.status())

    def remaining(self) -> int:
        return sum(1 for p in self.prompts.values() if p.status in ("pending", "running"))

    # -- prompts ---------------------------------------------------------------------------
    def next_number(self, front: bool) -> int:
        number = self.counter
        self.counter += 1
        return -number if front else number

    def add(self, prompt: ComfyPrompt, service: Service) -> None:
        self.prompts[prompt.id] = prompt
        prompt.task = asyncio.get_running_loop().create_task(run_prompt(self, service, prompt))
        self.broadcast_status()

    def known(self, prompt_id: str) -> bool:
        return prompt_id in self.prompts or prompt_id in self.history

    def running(self) -> list[ComfyPrompt]:
        return [p for p in self.prompts.values() if p.status == "running"]

    def pending(self) -> list[ComfyPrompt]:
        return [p for p in self.prompts.values() if p.status == "pending"]

    def cancel(self, prompt: ComfyPrompt, service: Service) -> None:
        for job_id in prompt.jobs:
            service.cancel(job_id)

    def close(self) -> None:
        for prompt in self.prompts.values():
            if prompt.task is not None:
                prompt.task.cancel()

    def record(self, prompt: ComfyPrompt) -> None:
        """Move a finished prompt into the history (ComfyUI's entry shape)."""
        self.prompts.pop(prompt.id, None)
        if prompt.deleted:
            return
        status = "success" if prompt.status == "success" else "error"
        self.history[prompt.id] = {
            "prompt": prompt.queue_item(),
            "outputs": prompt.outputs_ui,
            "status": {"status_str": status, "completed": status == "success", "messages": prompt.messages},
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in prompt.outputs_ui
            },
        }
        while len(self.history) > MAX_HISTORY:
            self.history.popitem(last=False)


def _now_ms() -> int:
    return int(time.time() * 1000)


def new_prompt_id() -> str:
    return str(uuid.uuid4())


async def _events(job: Job) -> AsyncIterator[dict[str, Any]]:
    """The job's events from its current state on, ending with its terminal event."""
    q = job.subscribe(asyncio.get_running_loop())
    try:
        while True:
            event = await q.get()
            yield event
            if event["event"] in ("done", "failed", "cancelled"):
                return
    finally:
        job.unsubscribe(q)


async def run_prompt(state: ComfyState, service: Service, p: ComfyPrompt) -> None:
    """Follow the prompt's jobs and tell its client what ComfyUI would, then record it in the history."""
    try:
        await _run(state, service, p)
    except asyncio.CancelledError:
        raise
    except Exception:  # never leave a prompt hanging because of a bug here
        log.exception("ComfyUI prompt %s failed", p.id)
        p.status = "error"
        _message(
            state,
            p,
            "execution_error",
            {
                "node_id": None,
                "node_type": None,
                "executed": [],
                "exception_message": "Internal error; the server log has the details.",
                "exception_type": "InternalError",
                "traceback": [],
                "current_inputs": {},
                "current_outputs": {},
            },
        )
    finally:
        if not p.deleted:
            state.send("executing", {"node": None, "display_node": None, "prompt_id": p.id}, p.client_id)
        state.record(p)
        state.broadcast_status()


def _message(state: ComfyState, p: ComfyPrompt, kind: str, data: dict[str, Any]) -> None:
    """A message kept in the prompt's history status and sent to its client."""
    data = {"prompt_id": p.id, **data, "timestamp": _now_ms()}
    p.messages.append([kind, data])
    state.send(kind, data, p.client_id)


async def _run(state: ComfyState, service: Service, p: ComfyPrompt) -> None:
    jobs = [service.get(j) for j in p.jobs]
    await _started(jobs[0])
    if p.deleted:
        return
    p.status = "running"
    state.broadcast_status()
    _message(state, p, "execution_start", {})
    _message(state, p, "execution_cached", {"nodes": []})
    executed: list[str] = []
    for nid in p.plan.order:
        state.send("executing", {"node": nid, "display_node": nid, "prompt_id": p.id}, p.client_id)
        index = p.plan.sampling_of(nid)
        if index is not None and not await _sample(state, service, p, nid, jobs[index], executed):
            return
        output = next((o for o in p.plan.outputs if o.node_id == nid), None)
        if output is not None:
            images = [_image_ref(service, jobs[i], output.folder) for i in output.samplings]
            ui = {"images": [ref for refs in images for ref in refs]}
            p.outputs_ui[nid] = ui
            state.send("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": p.id}, p.client_id)
        executed.append(nid)
    p.status = "success"
    _message(state, p, "execution_success", {})


async def _started(job: Job | None) -> None:
    """Wait until `job` leaves the queue: it started, or ended without running."""
    if job is None:
        return
    async for event in _events(job):
        if event["event"] != "status":
            return


async def _sample(state: ComfyState, service: Service, p: ComfyPrompt, nid: str, job: Job | None, executed) -> bool:
    """Stream one sampler's job as progress messages and previews; False if it failed or was interrupted."""
    if job is None:
        return _failed(state, p, nid, executed, "The job of this sampler is gone.", "SdplayError")
    last = 0
    async for event in _events(job):
        kind = event["event"]
        if kind == "progress" and event["step"] > last:
            last = event["step"]
            state.send(
                "progress",
                {"value": event["step"], "max": event["total_steps"], "prompt_id": p.id, "node": nid},
                p.client_id,
            )
        elif kind == "preview":
            frame = struct.pack(">II", PREVIEW_IMAGE, PNG) + event["png"]
            state._deliver(frame, p.client_id)
    if job.status is JobStatus.DONE:
        return True
    if job.status is JobStatus.CANCELLED:
        p.status = "interrupted"
        _message(
            state,
            p,
            "execution_interrupted",
            {"node_id": nid, "node_type": p.plan.classes[nid], "executed": list(executed)},
        )
        return False
    err = job.error
    return _failed(state, p, nid, executed, str(err) if err else "The job failed.", type(err).__name__)


def _failed(state: ComfyState, p: ComfyPrompt, nid: str, executed, message: str, kind: str) -> bool:
    p.status = "error"
    _message(
        state,
        p,
        "execution_error",
        {
            "node_id": nid,
            "node_type": p.plan.classes[nid],
            "executed": list(executed),
            "exception_message": message,
            "exception_type": kind,
            "traceback": [],
            "current_inputs": {},
            "current_outputs": {},
        },
    )
    return False


def _image_ref(service: Service, job: Job | None, folder: str) -> list[dict[str, str]]:
    if job is None or job.output is None:
        return []
    return [{"filename": f.name, "subfolder": f.parent.name, "type": folder} for f in job.output.files]
