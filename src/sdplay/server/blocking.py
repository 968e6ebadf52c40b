"""Blocking answers (OpenAI, A1111): wait for a job, and cancel it if the client goes away meanwhile."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request

from sdplay.server.jobs import Job
from sdplay.server.service import Service

log = logging.getLogger(__name__)

POLL_S = 0.25


async def wait_or_cancel(service: Service, job: Job, request: Request, poll_s: float = POLL_S) -> Job:
    """Wait until `job` ends; if the client disconnects first, cancel the job (at once if queued, within a
    step if running) and return once it has stopped."""
    waiter = asyncio.ensure_future(service.wait(job))
    try:
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=poll_s)
            if not waiter.done() and await request.is_disconnected():
                log.info("client of job %s disconnected; cancelling it", job.id)
                service.cancel(job.id)
                return await waiter
        return waiter.result()
    finally:
        if not waiter.done():
            waiter.cancel()
