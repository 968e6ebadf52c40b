"""Server-sent events: framing, and the stream of one job's events with keep-alive pings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from sdplay.server.jobs import Job, JobStatus

TERMINAL = ("done", "failed", "cancelled")
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE message: `event:` name and a one-line JSON `data:`."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def job_events(job: Job, ping_s: float = 15.0, poll_s: float = 1.0) -> AsyncIterator[dict[str, Any]]:
    """The job's events as they happen, plus {"event": "tick"} every `poll_s` while it is queued
    and {"event": "ping"} after `ping_s` of silence; ends after the terminal event."""
    q = job.subscribe(asyncio.get_running_loop())
    quiet = 0.0
    try:
        while True:
            wait = poll_s if job.status is JobStatus.QUEUED else ping_s
            try:
                event = await asyncio.wait_for(q.get(), timeout=wait)
            except TimeoutError:
                quiet += wait
                if job.status is JobStatus.QUEUED:
                    yield {"event": "tick"}
                if quiet >= ping_s:
                    quiet = 0.0
                    yield {"event": "ping"}
                continue
            quiet = 0.0
            yield event
            if event["event"] in TERMINAL:
                return
    finally:
        job.unsubscribe(q)
